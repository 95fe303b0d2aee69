package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestConformanceAgainstCarta runs `carta conformance` against a freshly started Carta holding two Synthea
// patients (A and B) with documents: every required test passes, the reports are valid JSON and JUnit XML, the
// last line of standard output is the summary, and the command's usage is checked.
func TestConformanceAgainstCarta(t *testing.T) {
	t.Setenv("CARTA_DATABASE_URL", "")
	data := t.TempDir()
	base, stop := startInProcess(t, "--data", data)
	defer stop()
	files, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "synthea", "[A-Z]*.json.gz"))
	if len(files) < 2 {
		t.Fatal("testdata/synthea has no patient bundles")
	}
	if out, errOut, code := runCmd(t, "import", "--data", data, files[0], files[1]); code != 0 {
		t.Fatalf("import: %s %s", out, errOut)
	}
	sys, _, _ := runCmd(t, "token", "--data", data, "--system", "--scope", "system/*.cruds")
	_, body := get(t, base+"/Patient?_count=10&_sort=_id", sys)
	var b struct {
		Entry []struct{ Resource struct{ ID string } }
	}
	json.Unmarshal([]byte(body), &b)
	if len(b.Entry) != 2 {
		t.Fatalf("want the two imported patients: %s", body)
	}
	a, bID := b.Entry[0].Resource.ID, b.Entry[1].Resource.ID
	doc := func(id, patient, date, content string) {
		s, body := send(t, "PUT", base+"/DocumentReference/"+id, sys, fmt.Sprintf(`{"resourceType":"DocumentReference","id":%q,"status":"current",
			"subject":{"reference":"Patient/%s"},"date":%q,"type":{"coding":[{"system":"http://loinc.org","code":"11506-3"}]},
			"category":[{"coding":[{"system":"http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category","code":"clinical-note"}]}],
			"content":[{"attachment":%s}]}`, id, patient, date, content))
		if s != 201 {
			t.Fatalf("PUT DocumentReference/%s: %d %s", id, s, body)
		}
	}
	doc("conf-a1", a, "2024-01-10T10:00:00Z", `{"contentType":"text/plain","data":"aGVsbG8="}`)
	doc("conf-a2", a, "2024-02-10T10:00:00Z", `{"contentType":"text/plain","data":"aGVsbG8="}`)
	send(t, "PUT", base+"/Binary/conf-b", sys, `{"resourceType":"Binary","id":"conf-b","contentType":"text/plain","data":"c2VjcmV0"}`)
	doc("conf-b1", bID, "2024-01-10T10:00:00Z", `{"contentType":"text/plain","url":"Binary/conf-b"}`)
	tokA, _, _ := runCmd(t, "token", "--data", data, "--patient", a, "--scope", "patient/*.cruds")
	clerk, _, _ := runCmd(t, "token", "--data", data, "--user", "Practitioner/conformance-clerk", "--scope", "user/*.cruds")
	tokB, _, _ := runCmd(t, "token", "--data", data, "--patient", bID, "--scope", "patient/*.rs")
	// A backend client, registered with its public key; the suite signs assertions with the private one.
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	dir := t.TempDir()
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(dir, "backend.pem")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	jwks := fmt.Sprintf(`{"keys":[{"kty":"RSA","kid":"conf-1","alg":"RS384","use":"sig","n":%q,"e":"AQAB"}]}`, base64.RawURLEncoding.EncodeToString(key.N.Bytes()))
	os.WriteFile(filepath.Join(dir, "jwks.json"), []byte(jwks), 0o600)
	if out, errOut, code := runCmd(t, "clients", "add", "--data", data, "--id", "conf-backend", "--kind", "backend", "--jwks", filepath.Join(dir, "jwks.json"), "--scope", "system/*.rs"); code != 0 {
		t.Fatalf("clients add: %s %s", out, errOut)
	}
	// An app and patient A's login, for the launch tests (the suite fills in Carta's sign-in and consent forms).
	if out, errOut, code := runCmd(t, "clients", "add", "--data", data, "--id", "conf-app", "--kind", "public", "--redirect-uri", "http://127.0.0.1:9/callback"); code != 0 {
		t.Fatalf("clients add: %s %s", out, errOut)
	}
	if out, errOut, code := runCmdIn(t, "correct horse battery staple\n", "users", "add", "--data", data, "--username", "conf-a", "--password", "-", "--patient", a); code != 0 {
		t.Fatalf("users add: %s %s", out, errOut)
	}
	cfg := filepath.Join(dir, "conformance.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("patientA:\n  id: %s\n  token: %s\npatientB:\n  id: %s\n  token: %s\npractitioner:\n  token: %s\nsystem:\n  token: %s\n"+
		"backend:\n  clientId: conf-backend\n  privateKeyFile: %s\n  kid: conf-1\n  scope: system/Patient.rs\n"+
		"launch:\n  clientId: conf-app\n  redirectUri: http://127.0.0.1:9/callback\n  username: conf-a\n  password: correct horse battery staple\n",
		a, tokA, bID, tokB, clerk, sys, keyFile)), 0o600)

	// The text report on standard output, progress on standard error.
	out, errOut, code := runCmd(t, "conformance", "--base", base, "--config", cfg)
	lines := strings.Split(out, "\n")
	summary := regexp.MustCompile(`^(\d+) passed, (\d+) failed, (\d+) skipped$`).FindStringSubmatch(lines[len(lines)-1])
	if code != 0 || summary == nil || summary[2] != "0" || !strings.Contains(out, "pass   rights-dispute-with-record") || !strings.Contains(out, "pass   backend-replayed-jti") || !strings.Contains(out, "pass   launch-revoked") {
		t.Fatalf("conformance against Carta: exit %d\n%s\n%s", code, out, errOut)
	}
	if summary[3] != "0" {
		t.Errorf("tests skipped against Carta with every input given:\n%s", out)
	}
	if !strings.Contains(errOut, "pass  isolation-binary") {
		t.Errorf("no progress on standard error: %q", errOut)
	}

	// JUnit to a file; JSON to standard output (then the summary line).
	junit := filepath.Join(t.TempDir(), "report.xml")
	if _, errOut, code := runCmd(t, "conformance", "--base", base, "--config", cfg, "--report", "junit", "--out", junit, "--quiet"); code != 0 {
		t.Fatalf("junit run: %d %s", code, errOut)
	}
	x, _ := os.ReadFile(junit)
	var suites struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Suites   []struct {
			Name string `xml:"name,attr"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(x, &suites); err != nil || suites.Tests < 50 || suites.Failures != 0 || len(suites.Suites) < 5 {
		t.Fatalf("JUnit report: %v %+v", err, suites)
	}
	out, _, code = runCmd(t, "conformance", "--base", base, "--config", cfg, "--report", "json", "--group", "isolation", "--quiet")
	i := strings.LastIndex(out, "\n")
	var rep struct {
		Groups []struct {
			ID, Status string
			Tests      []struct{ ID, Status, Requirement string }
		}
	}
	if err := json.Unmarshal([]byte(out[:i]), &rep); err != nil || code != 0 || len(rep.Groups) != 1 || rep.Groups[0].ID != "isolation" || rep.Groups[0].Status != "pass" {
		t.Fatalf("JSON report of the isolation group: %v %d %s", err, code, out)
	}

	// The launch group with a confidential (symmetric) client: the suite authenticates with HTTP Basic.
	if out, errOut, code := runCmdIn(t, "a confidential secret of the app\n", "clients", "add", "--data", data, "--id", "conf-secret", "--kind", "confidential",
		"--secret", "-", "--redirect-uri", "http://127.0.0.1:9/callback"); code != 0 {
		t.Fatalf("clients add: %s %s", out, errOut)
	}
	symCfg := filepath.Join(dir, "symmetric.json")
	os.WriteFile(symCfg, []byte(fmt.Sprintf(`{"base":%q,"patientA":{"id":%q,"token":%q},"launch":{"clientId":"conf-secret","clientSecret":"a confidential secret of the app",
		"redirectUri":"http://127.0.0.1:9/callback","username":"conf-a","password":"correct horse battery staple"}}`, base, a, tokA)), 0o600)
	if out, errOut, code := runCmd(t, "conformance", "--config", symCfg, "--group", "launch", "--quiet"); code != 0 || !strings.HasSuffix(out, "8 passed, 0 failed, 0 skipped") {
		t.Fatalf("launch with a symmetric client: %d\n%s\n%s", code, out, errOut)
	}

	// A patient token that can read another patient's record makes the run fail (exit 1).
	leaky, _, _ := runCmd(t, "token", "--data", data, "--user", "Practitioner/x", "--scope", "user/*.rs")
	if out, _, code := runCmd(t, "conformance", "--base", base, "--config", cfg, "--patient-a-token", leaky, "--group", "isolation", "--quiet"); code != 1 || !strings.Contains(out, "FAIL   isolation-read") {
		t.Fatalf("a token that sees everyone as patient A: exit %d\n%s", code, out)
	}

	// --list, and usage mistakes.
	list, _, code := runCmd(t, "conformance", "--list")
	if code != 0 || !regexp.MustCompile(`(?m)^isolation-binary\tisolation\t.+$`).MatchString(list) {
		t.Fatalf("--list: %d\n%s", code, list)
	}
	typo := filepath.Join(dir, "typo.json")
	os.WriteFile(typo, []byte(`{"base":"`+base+`","patientA":{"id":"x","tokn":"y"}}`), 0o600)
	if _, errOut, code := runCmd(t, "conformance", "--config", typo); code != 2 || !strings.Contains(errOut, "tokn") {
		t.Errorf("a misspelt input: exit %d, want 2 naming it (%s)", code, errOut)
	}
	for _, args := range [][]string{{"conformance"}, {"conformance", "--base", base, "--group", "nope"}, {"conformance", "--base", base, "--report", "xml"}} {
		if _, errOut, code := runCmd(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, errOut)
		}
	}
}
