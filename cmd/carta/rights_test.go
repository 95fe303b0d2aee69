package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestJurisdictionsAndOverdue: serve with state profiles (a built-in and one from --rights-config) — the earliest
// due date wins; an unknown profile is refused; carta overdue lists what is past due.
func TestJurisdictionsAndOverdue(t *testing.T) {
	t.Setenv("CARTA_DATABASE_URL", "")
	if _, errOut, code := runCmd(t, "serve", "--data", t.TempDir(), "--jurisdictions", "US-XX"); code != 2 || !strings.Contains(errOut, `no profile "US-XX"`) {
		t.Fatalf("unknown jurisdiction: %d %s", code, errOut)
	}
	typo := filepath.Join(t.TempDir(), "typo.json")
	os.WriteFile(typo, []byte(`{"profiles":[{"code":"US-ZZ","clocks":{"access-cpy":{"days":10}}}]}`), 0o644)
	if _, errOut, code := runCmd(t, "serve", "--data", t.TempDir(), "--rights-config", typo, "--jurisdictions", "US-ZZ"); code == 0 || !strings.Contains(errOut, `no request type "access-cpy"`) {
		t.Fatalf("a misspelt request type in --rights-config: %d %s", code, errOut)
	}
	data := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "rights.json")
	os.WriteFile(cfg, []byte(`{"profiles":[{"code":"US-ZZ","title":"A stricter state","clocks":{"access-copy":{"days":10}}}]}`), 0o644)
	base, stop := startInProcess(t, "--data", data, "--jurisdictions", "US-CA,US-ZZ", "--rights-config", cfg, "--contact-name", "Privacy Officer", "--contact-phone", "+1 555 0100")
	defer stop()
	sys, _, _ := runCmd(t, "token", "--data", data, "--system", "--scope", "system/*.cruds")
	send(t, "PUT", base+"/Patient/p1", sys, `{"resourceType":"Patient","id":"p1"}`)
	pat, _, _ := runCmd(t, "token", "--data", data, "--patient", "p1", "--scope", "patient/*.cruds")
	s, body := send(t, "POST", base+"/Task", pat, `{"resourceType":"Task","status":"draft","intent":"order",
		"code":{"coding":[{"system":"https://carta-fhir.github.io/fhir/CodeSystem/request-type","code":"access-copy"}]},"for":{"reference":"Patient/p1"}}`)
	var task struct {
		Restriction struct{ Period struct{ End string } }
	}
	json.Unmarshal([]byte(body), &task)
	want := time.Now().UTC().AddDate(0, 0, 10).Format("2006-01-02")
	if s != 201 || task.Restriction.Period.End != want || !strings.Contains(body, `"valueCode":"US-ZZ"`) {
		t.Fatalf("due date under US-CA (15 days) and US-ZZ (10 days): %d %s", s, body)
	}
	out, _, code := runCmd(t, "overdue", "--data", data)
	if code != 0 || !strings.Contains(out, "no open request is past its due date") {
		t.Fatalf("overdue with nothing late: %d %s", code, out)
	}
	send(t, "PUT", base+"/Task/old", sys, `{"resourceType":"Task","id":"old","status":"ready","intent":"order","for":{"reference":"Patient/p1"},"restriction":{"period":{"end":"2020-01-31"}}}`)
	out, errOut, code := runCmd(t, "overdue", "--data", data, "--json")
	var o struct {
		Task, Due string
		DaysLate  int
	}
	json.Unmarshal([]byte(out), &o)
	if code != 0 || o.Task != "Task/old" || o.Due != "2020-01-31" || o.DaysLate < 365 {
		t.Fatalf("overdue: %d %q %s", code, out, errOut)
	}
}

// TestRightsWalkthrough runs docs/rights-walkthrough.sh — both workflows as curl requests against a fresh carta
// serve, each step checking its status code — so the curl sequences in docs/rights.md stay what the server does.
// It needs bash, curl and jq; CARTA_TEST_WALKTHROUGH=1 (set by .ci/run) makes their absence a failure.
func TestRightsWalkthrough(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CARTA_TEST_WALKTHROUGH") == "1" {
				t.Fatalf("%s is needed for the walkthrough", tool)
			}
			t.Skipf("%s is not installed", tool)
		}
	}
	// The test binary is carta (TestMain); a wrapper makes it a command the script can run.
	wrapper := filepath.Join(t.TempDir(), "carta")
	os.WriteFile(wrapper, []byte("#!/bin/sh\nCARTA_BE_CARTA=1 exec "+os.Args[0]+" \"$@\"\n"), 0o755)
	cmd := exec.Command("bash", filepath.Join("..", "..", "docs", "rights-walkthrough.sh"))
	cmd.Env = append(os.Environ(), "CARTA="+wrapper, "CARTA_DATABASE_URL=", "CARTA_REDIS_URL=")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("the walkthrough failed: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"## Right of access", "## Right to amend", "### 21.", "a request may be extended once",
		"the reviewer took part in the denial", `"status": "superseded"`, "Statement of disagreement about the records"} {
		if !strings.Contains(out, want) {
			t.Errorf("the walkthrough's output lacks %q", want)
		}
	}
}
