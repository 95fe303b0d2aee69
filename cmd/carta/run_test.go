package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/carta-fhir/carta/store/storetest"
)

// TestMain lets the test binary act as the carta binary: tests start it as a real child process (to kill it
// with SIGKILL, or to run two replicas) with CARTA_BE_CARTA=1.
func TestMain(m *testing.M) {
	if os.Getenv("CARTA_BE_CARTA") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

var bannerRE = regexp.MustCompile(`serving FHIR R4 at (\S+)`)

// startInProcess runs `carta serve` through run() and returns the FHIR base and a function that stops it and
// returns its exit code.
func startInProcess(t *testing.T, args ...string) (string, func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"serve", "--addr", "127.0.0.1:0"}, args...), os.Getenv, strings.NewReader(""), io.Discard, pw)
		pw.Close()
	}()
	base := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := bannerRE.FindStringSubmatch(sc.Text()); m != nil {
				base <- m[1]
			}
		}
	}()
	select {
	case b := <-base:
		return b, func() int { cancel(); return <-done }
	case code := <-done:
		t.Fatalf("serve exited with %d", code)
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not start")
	}
	return "", nil
}

func runCmd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, os.Getenv, strings.NewReader(""), &out, &errb)
	return strings.TrimSpace(out.String()), errb.String(), code
}

func get(t *testing.T, url, tok string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func send(t *testing.T, method, url, tok, body string, headers ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/fhir+json")
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestReadmeFlow is the README's walk-through: serve, mint a token, load the sample data, read and search.
func TestReadmeFlow(t *testing.T) {
	data := t.TempDir()
	t.Setenv("CARTA_DATABASE_URL", "")
	if _, errOut, code := runCmd(t, "token", "--data", data, "--system", "--scope", "system/*.rs"); code != 1 || !strings.Contains(errOut, "start `carta serve` once") {
		t.Fatalf("token before serve: %d %s", code, errOut)
	}
	base, stop := startInProcess(t, "--data", data)
	tok, errOut, code := runCmd(t, "token", "--data", data, "--system", "--scope", "system/*.cruds")
	if code != 0 || strings.Count(tok, ".") != 2 {
		t.Fatalf("token: %d %q %s", code, tok, errOut)
	}
	if s, _ := get(t, base+"/metadata", ""); s != 200 {
		t.Fatalf("metadata: %d", s)
	}
	if s, _ := get(t, base+"/Patient", ""); s != 401 {
		t.Fatalf("no token: %d", s)
	}
	out, errOut, code := runCmd(t, "import", "--data", data, "../../testdata/synthea")
	if code != 0 || !strings.Contains(out, "imported 32 of 32 files (3046 resources written)") {
		t.Fatalf("import: %d %s %s", code, out, errOut)
	}
	s, body := get(t, base+"/Patient?_summary=count", tok)
	if s != 200 || !strings.Contains(body, `"total":30`) {
		t.Fatalf("patients after import: %d %s", s, body)
	}
	s, body = get(t, base+"/Patient?family=Fonseca", tok)
	if s != 200 || !strings.Contains(body, `"family":"Fonseca`) {
		t.Fatalf("search: %d %s", s, body[:min(300, len(body))])
	}
	id := regexp.MustCompile(`"fullUrl":"[^"]*/Patient/([^"]+)"`).FindStringSubmatch(body)[1]
	s, body = get(t, base+"/Observation?patient="+id+"&_count=5&_include=Observation:subject", tok)
	if s != 200 || !strings.Contains(body, `"mode":"include"`) {
		t.Fatalf("observations of %s: %d", id, s)
	}
	// The patient's own token sees only their record.
	ptok, _, code := runCmd(t, "token", "--data", data, "--patient", id, "--scope", "patient/*.rs")
	if code != 0 {
		t.Fatal("patient token")
	}
	s, body = get(t, base+"/Patient?_summary=count", ptok)
	if s != 200 || !strings.Contains(body, `"total":1`) {
		t.Fatalf("patient sees %s", body)
	}
	// A representative's token is for the patient their RelatedPerson record names.
	if s, body := send(t, "PUT", base+"/RelatedPerson/rep", tok, `{"resourceType":"RelatedPerson","id":"rep","patient":{"reference":"Patient/`+id+`"}}`); s != 201 {
		t.Fatalf("RelatedPerson: %d %s", s, body)
	}
	rtok, errOut, code := runCmd(t, "token", "--data", data, "--user", "RelatedPerson/rep", "--scope", "patient/*.rs")
	if code != 0 {
		t.Fatalf("RelatedPerson token: %s", errOut)
	}
	if s, _ := get(t, base+"/Patient/"+id, rtok); s != 200 {
		t.Errorf("representative reading the patient: %d", s)
	}
	if s, body := get(t, base+"/Patient?_summary=count", rtok); s != 200 || !strings.Contains(body, `"total":1`) {
		t.Errorf("representative sees %s", body)
	}
	if _, errOut, code := runCmd(t, "token", "--data", data, "--user", "RelatedPerson/nobody", "--scope", "patient/*.rs"); code != 1 || !strings.Contains(errOut, "not known") {
		t.Errorf("token for a missing RelatedPerson: %d %s", code, errOut)
	}
	// Import reports a file it cannot load, loads the others, and exits 1.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a-bad.json"), []byte(`{"resourceType":"Patient","gender":"M"}`), 0o644)
	os.WriteFile(filepath.Join(dir, "b-good.json"), []byte(`{"resourceType":"Patient","id":"imported","name":[{"family":"Imported"}]}`), 0o644)
	os.WriteFile(filepath.Join(dir, "c-resources.ndjson"), []byte("{\"resourceType\":\"Patient\",\"id\":\"nd1\"}\n{\"resourceType\":\"Patient\",\"id\":\"nd2\"}\n"), 0o644)
	out, errOut, code = runCmd(t, "import", "--data", data, dir)
	if code != 1 || !strings.Contains(errOut, "a-bad.json: 400") || !strings.Contains(errOut, "Patient.gender") || !strings.Contains(out, "imported 2 of 3 files") {
		t.Errorf("import with a bad file: %d\n%s\n%s", code, out, errOut)
	}
	for _, p := range []string{"imported", "nd1", "nd2"} {
		if s, _ := get(t, base+"/Patient/"+p, tok); s != 200 {
			t.Errorf("Patient/%s not imported: %d", p, s)
		}
	}
	// Usage errors exit 2.
	if _, _, code := runCmd(t, "token", "--data", data, "--patient", id, "--scope", "system/*.rs"); code != 2 {
		t.Errorf("mismatched scope: exit %d", code)
	}
	if _, _, code := runCmd(t, "bogus"); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
	if out, _, code := runCmd(t, "version"); code != 0 || !strings.HasPrefix(out, "carta ") {
		t.Errorf("version: %d %q", code, out)
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve exited %d on shutdown", code)
	}
}

// child is a carta process started from the test binary.
type child struct {
	cmd  *exec.Cmd
	base string
	logs *bytes.Buffer
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startChild(t *testing.T, env []string, args ...string) *child {
	t.Helper()
	addr := freePort(t)
	cmd := exec.Command(os.Args[0], append([]string{"serve", "--addr", addr}, args...)...)
	cmd.Env = append(append(os.Environ(), "CARTA_BE_CARTA=1"), env...)
	logs := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, base: "http://" + addr + "/fhir", logs: logs}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if res, err := http.Get("http://" + addr + "/readyz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return c
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("carta did not become ready:\n%s", logs)
	return nil
}

func childToken(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"token"}, args...)...)
	cmd.Env = append(append(os.Environ(), "CARTA_BE_CARTA=1"), env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestAcknowledgedWritesSurviveKill9 kills the server without warning after writes were acknowledged, restarts
// it, and reads every one back, on SQLite and (when configured) PostgreSQL.
func TestAcknowledgedWritesSurviveKill9(t *testing.T) {
	for _, b := range storetest.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			data := t.TempDir()
			env := []string{"CARTA_DATABASE_URL=" + b.Config.DatabaseURL}
			args := []string{"--data", data, "--base-url", "http://carta.test"}
			c := startChild(t, env, args...)
			tok := childToken(t, env, "--data", data, "--system", "--scope", "system/*.cruds")
			var ids []string
			for i := 0; i < 25; i++ {
				s, body := send(t, "POST", c.base+"/Patient", tok, fmt.Sprintf(`{"resourceType":"Patient","name":[{"family":"Kill%d"}]}`, i))
				if s != 201 {
					t.Fatalf("create: %d %s", s, body)
				}
				ids = append(ids, regexp.MustCompile(`"id":"([^"]+)"`).FindStringSubmatch(body)[1])
			}
			s, _ := send(t, "PUT", c.base+"/Patient/"+ids[0], tok, `{"resourceType":"Patient","id":"`+ids[0]+`","name":[{"family":"Updated"}]}`)
			if s != 200 {
				t.Fatalf("update: %d", s)
			}
			if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			c.cmd.Wait()
			c2 := startChild(t, env, args...)
			defer func() {
				// A clean stop: SIGTERM finishes and exits 0.
				c2.cmd.Process.Signal(syscall.SIGTERM)
				if err := c2.cmd.Wait(); err != nil {
					t.Errorf("carta did not stop cleanly on SIGTERM: %v\n%s", err, c2.logs)
				}
				if !strings.Contains(c2.logs.String(), `"msg":"stopped"`) {
					t.Errorf("no stop log: %s", c2.logs)
				}
			}()
			for i, id := range ids {
				s, body := get(t, c2.base+"/Patient/"+id, tok)
				want := fmt.Sprintf("Kill%d", i)
				if i == 0 {
					want = "Updated"
				}
				if s != 200 || !strings.Contains(body, want) {
					t.Fatalf("after kill -9, Patient/%s: %d %s", id, s, body)
				}
			}
		})
	}
}

// TestTwoReplicasShareOnePostgres runs two carta processes on one PostgreSQL database: what one writes the other
// serves at once, a token works on both, and conditional creates split across them still create once.
func TestTwoReplicasShareOnePostgres(t *testing.T) {
	u := os.Getenv("CARTA_TEST_DATABASE_URL")
	if u == "" {
		t.Skip("CARTA_TEST_DATABASE_URL is not set")
	}
	db := storetest.PostgresSchema(t, u)
	env := []string{"CARTA_DATABASE_URL=" + db}
	if r := os.Getenv("CARTA_TEST_REDIS_URL"); r != "" {
		env = append(env, "CARTA_REDIS_URL="+r)
	}
	args := []string{"--base-url", "https://fhir.example.test"}
	a := startChild(t, env, args...)
	b := startChild(t, env, args...)
	tok := childToken(t, env, "--system", "--scope", "system/*.cruds")
	s, body := send(t, "PUT", a.base+"/Patient/shared", tok, `{"resourceType":"Patient","id":"shared","name":[{"family":"One"}]}`)
	if s != 201 {
		t.Fatalf("write on A: %d %s", s, body)
	}
	if s, body := get(t, b.base+"/Patient/shared", tok); s != 200 || !strings.Contains(body, "One") {
		t.Fatalf("read on B: %d %s", s, body)
	}
	if s, body := send(t, "PUT", b.base+"/Patient/shared", tok, `{"resourceType":"Patient","id":"shared","name":[{"family":"Two"}]}`, `If-Match: W/"1"`); s != 200 {
		t.Fatalf("update on B: %d %s", s, body)
	}
	if s, _ := send(t, "PUT", a.base+"/Patient/shared", tok, `{"resourceType":"Patient","id":"shared","name":[{"family":"Three"}]}`, `If-Match: W/"1"`); s != 412 {
		t.Fatalf("stale update on A: %d, want 412", s)
	}
	if s, body := get(t, a.base+"/Patient?family=two", tok); s != 200 || !strings.Contains(body, `"total":1`) {
		t.Fatalf("search on A after B's update: %d %s", s, body)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	created := 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			target := a
			if i%2 == 1 {
				target = b
			}
			s, _ := send(t, "POST", target.base+"/Patient", tok, `{"resourceType":"Patient","identifier":[{"system":"urn:x","value":"both"}]}`, "If-None-Exist: identifier=urn:x|both")
			mu.Lock()
			if s == 201 {
				created++
			}
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	if s, body := get(t, b.base+"/Patient?identifier=urn:x|both", tok); created != 1 || !strings.Contains(body, `"total":1`) {
		t.Fatalf("conditional creates across replicas: created %d, search %d %s", created, s, body)
	}
}
