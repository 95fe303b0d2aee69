package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
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
	base, stop, _ := startWithBanner(t, args...)
	return base, stop
}

// startWithBanner is startInProcess that also returns what the server printed on standard error at start (the
// banner, whole).
func startWithBanner(t *testing.T, args ...string) (string, func() int, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"serve", "--addr", "127.0.0.1:0"}, args...), os.Getenv, strings.NewReader(""), io.Discard, pw)
		pw.Close()
	}()
	type banner struct{ base, text string }
	started := make(chan banner, 1)
	go func() {
		// The banner is one write: every line of it is in the reader's buffer once the first one is.
		br := bufio.NewReader(pr)
		var text strings.Builder
		for {
			line, err := br.ReadString('\n')
			text.WriteString(line)
			if m := bannerRE.FindStringSubmatch(line); m != nil {
				for br.Buffered() > 0 {
					more, _ := br.ReadString('\n')
					text.WriteString(more)
				}
				started <- banner{m[1], text.String()}
				io.Copy(io.Discard, br)
				return
			}
			if err != nil {
				return
			}
		}
	}()
	select {
	case b := <-started:
		return b.base, func() int { cancel(); return <-done }, b.text
	case code := <-done:
		t.Fatalf("serve exited with %d", code)
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not start")
	}
	return "", nil, ""
}

func runCmd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runCmdIn(t, "", args...)
}

// runCmdIn runs a carta command with the given standard input.
func runCmdIn(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, os.Getenv, strings.NewReader(stdin), &out, &errb)
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

// freePort is a loopback address free at the time of asking.
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

// scriptedLogin drives authorize → login → consent on base (an http://host:port server root) and returns the
// code the app receives. Each step may go to a different replica: bases lists them in turn.
func scriptedLogin(t *testing.T, bases []string, fhirBase, client, redirect, user, pass, scope, challenge string) string {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	// The cookie is set for one host; replicas share it as a load balancer would present them.
	step := func(i int, method, path string, form url.Values) (*http.Response, string) {
		base := bases[i%len(bases)]
		var req *http.Request
		if method == "GET" {
			req, _ = http.NewRequest("GET", base+path, nil)
		} else {
			req, _ = http.NewRequest("POST", base+path, strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		for _, ck := range jar.Cookies(mustURL(bases[0])) {
			req.AddCookie(ck)
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if cks := res.Cookies(); len(cks) > 0 {
			jar.SetCookies(mustURL(bases[0]), cks)
		}
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}
	q := url.Values{"response_type": {"code"}, "client_id": {client}, "redirect_uri": {redirect}, "scope": {scope}, "state": {"s1"},
		"aud": {fhirBase}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}
	res, body := step(0, "GET", "/auth/authorize?"+q.Encode(), nil)
	if res.StatusCode != 302 {
		t.Fatalf("authorize: %d %s", res.StatusCode, body)
	}
	_, body = step(1, "GET", "/auth/login", nil)
	tok := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if tok == nil {
		t.Fatalf("login page: %s", body)
	}
	res, body = step(2, "POST", "/auth/login", url.Values{"csrf": {tok[1]}, "username": {user}, "password": {pass}})
	if res.StatusCode != 303 {
		t.Fatalf("login: %d %s", res.StatusCode, body)
	}
	_, body = step(3, "GET", "/auth/consent", nil)
	var keep []string
	for _, m := range regexp.MustCompile(`name="keep" value="([^"]+)"`).FindAllStringSubmatch(body, -1) {
		keep = append(keep, m[1])
	}
	res, body = step(4, "POST", "/auth/consent", url.Values{"csrf": {tok[1]}, "action": {"approve"}, "keep": keep})
	loc, _ := url.Parse(res.Header.Get("Location"))
	if res.StatusCode != 303 || loc == nil || loc.Query().Get("code") == "" {
		t.Fatalf("consent: %d %s %s", res.StatusCode, res.Header.Get("Location"), body)
	}
	return loc.Query().Get("code")
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func postForm(t *testing.T, u string, form url.Values) (int, map[string]any) {
	t.Helper()
	res, err := http.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out
}

// TestSMARTAcrossReplicas: two carta processes on one PostgreSQL and one Redis. A person signs in with steps
// alternating between them, a code issued through one is redeemable once on either, and a token revoked on one is
// refused by the other within a second.
func TestSMARTAcrossReplicas(t *testing.T) {
	u, r := os.Getenv("CARTA_TEST_DATABASE_URL"), os.Getenv("CARTA_TEST_REDIS_URL")
	if u == "" || r == "" {
		t.Skip("needs CARTA_TEST_DATABASE_URL and CARTA_TEST_REDIS_URL")
	}
	db := storetest.PostgresSchema(t, u)
	env := []string{"CARTA_DATABASE_URL=" + db, "CARTA_REDIS_URL=" + r}
	args := []string{"--base-url", "http://fhir.example.test"}
	a := startChild(t, env, args...)
	b := startChild(t, env, args...)
	t.Setenv("CARTA_DATABASE_URL", db)
	tok := childToken(t, env, "--system", "--scope", "system/*.cruds")
	if s, body := send(t, "PUT", a.base+"/Patient/p1", tok, `{"resourceType":"Patient","id":"p1","name":[{"family":"Replica"}]}`); s != 201 {
		t.Fatalf("patient: %d %s", s, body)
	}
	redirect := "http://127.0.0.1:9/callback"
	if out, errOut, code := runCmd(t, "clients", "add", "--id", "app", "--kind", "public", "--redirect-uri", redirect); code != 0 {
		t.Fatalf("clients add: %s %s", out, errOut)
	}
	if out, errOut, code := runCmd(t, "users", "add", "--username", "pat", "--password", "long enough pw", "--patient", "p1"); code != 0 {
		t.Fatalf("users add: %s %s", out, errOut)
	}
	roots := []string{strings.TrimSuffix(a.base, "/fhir"), strings.TrimSuffix(b.base, "/fhir")}
	verifier, challenge := pkceForTest()
	code := scriptedLogin(t, roots, "http://fhir.example.test/fhir", "app", redirect, "pat", "long enough pw", "launch/patient patient/*.rs", challenge)
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "code_verifier": {verifier}, "redirect_uri": {redirect}, "client_id": {"app"}}
	s, out := postForm(t, roots[1]+"/auth/token", form)
	if s != 200 || out["patient"] != "p1" {
		t.Fatalf("redeeming on B a code issued by A: %d %v", s, out)
	}
	first := out["access_token"].(string)
	if s, out := postForm(t, roots[0]+"/auth/token", form); s != 400 || out["error"] != "invalid_grant" {
		t.Fatalf("redeeming the same code again on A: %d %v", s, out)
	}
	refusedWithinASecond(t, b.base+"/Patient/p1", first, "the token of a reused code")
	// A token revoked on A is refused by B.
	code = scriptedLogin(t, roots, "http://fhir.example.test/fhir", "app", redirect, "pat", "long enough pw", "launch/patient patient/*.rs", challenge)
	form.Set("code", code)
	s, out = postForm(t, roots[0]+"/auth/token", form)
	if s != 200 {
		t.Fatalf("second grant: %d %v", s, out)
	}
	at := out["access_token"].(string)
	if s, _ := get(t, b.base+"/Patient/p1", at); s != 200 {
		t.Fatalf("reading on B: %d", s)
	}
	if s, _ := postForm(t, roots[0]+"/auth/revoke", url.Values{"token": {at}, "client_id": {"app"}}); s != 200 {
		t.Fatalf("revoke on A: %d", s)
	}
	refusedWithinASecond(t, b.base+"/Patient/p1", at, "a token revoked on the other replica")
}

func refusedWithinASecond(t *testing.T, u, tok, what string) {
	t.Helper()
	refusedWithin(t, time.Second, u, tok, what)
}

func refusedWithin(t *testing.T, d time.Duration, u, tok, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if s, _ := get(t, u, tok); s == 401 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is still accepted %s later", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pkceForTest() (string, string) {
	v := randomString(32)
	sum := sha256.Sum256([]byte(v))
	return v, base64.RawURLEncoding.EncodeToString(sum[:])
}

// smartClientDir installs the official SMART JavaScript client for the fhirclient test (npm ci from the lock
// file, once per lock file) and returns the directory holding standalone.js. Without Node it skips the test,
// unless CARTA_TEST_NODE names a node binary (.ci/run does), in which case a missing one is a failure.
func smartClientDir(t *testing.T) (dir, node string) {
	t.Helper()
	node = os.Getenv("CARTA_TEST_NODE")
	var err error
	if node != "" {
		if node, err = exec.LookPath(node); err != nil {
			t.Fatalf("CARTA_TEST_NODE: %v", err)
		}
	} else if node, err = exec.LookPath("node"); err != nil {
		t.Skip("no node; the fhirclient test needs Node.js 18+ and npm")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatalf("node without npm: %v", err)
	}
	dir, _ = filepath.Abs("../../testdata/smart-client")
	lock, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	stamp := filepath.Join(dir, "node_modules", ".carta-installed-lock")
	if have, err := os.ReadFile(stamp); err == nil && bytes.Equal(have, lock) {
		return dir, node
	}
	cmd := exec.Command(npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
	}
	if err := os.WriteFile(stamp, lock, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, node
}

// TestFhirclientStandaloneLaunch: the official SMART JavaScript client (fhirclient, headless in Node) discovers
// Carta, performs a standalone patient launch with PKCE (sign-in and consent by a scripted person), reads the
// patient and its Observations, is refused another patient, and refreshes its token — what app developers use,
// against what `carta serve`, `carta clients add` and `carta users add` set up.
func TestFhirclientStandaloneLaunch(t *testing.T) {
	dir, node := smartClientDir(t)
	data := t.TempDir()
	t.Setenv("CARTA_DATABASE_URL", "")
	base, stop := startInProcess(t, "--data", data)
	defer stop()
	tok, errOut, code := runCmd(t, "token", "--data", data, "--system", "--scope", "system/*.cruds")
	if code != 0 {
		t.Fatalf("token: %s", errOut)
	}
	for _, r := range []struct{ path, body string }{
		{"/Patient/p1", `{"resourceType":"Patient","id":"p1","name":[{"family":"Chalmers","given":["Peter"]}]}`},
		{"/Patient/p2", `{"resourceType":"Patient","id":"p2","name":[{"family":"Other"}]}`},
		{"/Observation/o1", `{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"weight"},"subject":{"reference":"Patient/p1"}}`},
		{"/Observation/o2", `{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"weight"},"subject":{"reference":"Patient/p2"}}`},
	} {
		if s, body := send(t, "PUT", base+r.path, tok, r.body); s != 201 {
			t.Fatalf("PUT %s: %d %s", r.path, s, body)
		}
	}
	_, port, _ := strings.Cut(freePort(t), ":")
	if out, errOut, code := runCmd(t, "clients", "add", "--data", data, "--id", "js-app", "--name", "JS App", "--kind", "public",
		"--redirect-uri", "http://127.0.0.1:"+port+"/callback"); code != 0 {
		t.Fatalf("clients add: %s %s", out, errOut)
	}
	if out, errOut, code := runCmd(t, "users", "add", "--data", data, "--username", "peter", "--password", "correct horse battery", "--patient", "p1"); code != 0 {
		t.Fatalf("users add: %s %s", out, errOut)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "standalone.js", base, "js-app", "peter", "correct horse battery", port, "p2")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fhirclient app: %v\n%s", err, stderr.String())
	}
	var got struct {
		PatientID, FHIRUser, Scope, TokenType string
		HasRefreshToken, Refreshed            bool
		PatientRead                           struct{ ResourceType, ID string }
		ObservationSearch                     struct {
			ResourceType string
			Count        int
		}
		OtherPatientStatus any
		ReadAfterRefresh   string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("app output %q: %v", out, err)
	}
	if got.PatientID != "p1" || got.FHIRUser != "Patient/p1" || got.TokenType != "Bearer" || !got.HasRefreshToken {
		t.Errorf("launch context: %s", out)
	}
	if got.Scope != "launch/patient openid fhirUser offline_access patient/Patient.rs patient/Observation.rs" {
		t.Errorf("granted scope %q", got.Scope)
	}
	if got.PatientRead.ResourceType != "Patient" || got.PatientRead.ID != "p1" {
		t.Errorf("patient read: %s", out)
	}
	if got.ObservationSearch.ResourceType != "Bundle" || got.ObservationSearch.Count != 1 {
		t.Errorf("the patient's Observations: %s", out)
	}
	if got.OtherPatientStatus != float64(404) {
		t.Errorf("another patient's record answered %v, want 404", got.OtherPatientStatus)
	}
	if !got.Refreshed || got.ReadAfterRefresh != "p1" {
		t.Errorf("refresh: %s", out)
	}
}
