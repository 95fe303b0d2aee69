package main

import (
	"encoding/json"
	"os"
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
