package main

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/carta-fhir/carta/handlers/browsertest"
	"github.com/chromedp/chromedp"
)

var demoPasswordRE = regexp.MustCompile(`(demo-patient|demo-doctor)\s+/ ([a-z0-9]{5}-[a-z0-9]{5}-[a-z0-9]{5})`)

// demoServer starts `carta serve --demo` on a fresh data directory and returns the FHIR base, the data
// directory and the printed passwords.
func demoServer(t *testing.T) (base, data string, passwords map[string]string) {
	t.Helper()
	data = t.TempDir()
	t.Setenv("CARTA_DATABASE_URL", "")
	base, stop, banner := startWithBanner(t, "--data", data, "--demo")
	t.Cleanup(func() { stop() })
	passwords = map[string]string{}
	for _, m := range demoPasswordRE.FindAllStringSubmatch(banner, -1) {
		passwords[m[1]] = m[2]
	}
	if len(passwords) != 2 || !strings.Contains(banner, strings.TrimSuffix(base, "/fhir")+"/demo") {
		t.Fatalf("the demo banner does not say where to go and how to sign in:\n%s", banner)
	}
	return base, data, passwords
}

// TestDemoStandaloneLaunchInChromium is the README's demo walk-through in a real browser: open /demo, connect,
// sign in as the demo patient, allow, and see her record; the token shown works with curl and reaches only her.
func TestDemoStandaloneLaunchInChromium(t *testing.T) {
	bin := browsertest.Chromium(t)
	base, _, passwords := demoServer(t)
	root := strings.TrimSuffix(base, "/fhir")
	step := browsertest.Open(t, bin, root+"/demo")
	browsertest.Must(t, "connect, sign in, allow", chromedp.Do(step,
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#username`)),
		chromedp.SendKeys(chromedp.CSS(`#username`), "demo-patient"),
		chromedp.SendKeys(chromedp.CSS(`#password`), passwords["demo-patient"]),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`button[value=approve]`)),
		chromedp.Click(chromedp.CSS(`button[value=approve]`)),
		chromedp.WaitVisible(chromedp.CSS(`#token`)),
	))
	text, err := chromedp.Run(step, chromedp.Text(chromedp.CSS(`main`)))
	browsertest.Must(t, "result page", err)
	token, err := chromedp.Run(step, chromedp.Value(chromedp.CSS(`#token`)))
	browsertest.Must(t, "token", err)
	for _, want := range []string{"Patient/demo-patient", "Jamie Rivera", "patient/*.rs", "refresh token", "curl -H"} {
		if !strings.Contains(text, want) {
			t.Errorf("the connected page does not show %q:\n%s", want, text)
		}
	}
	// The token does what the page says.
	if s, body := get(t, base+"/DocumentReference?patient=demo-patient", token); s != 200 || !strings.Contains(body, `"demo-visit-note"`) {
		t.Errorf("her documents with the demo token: %d %.300s", s, body)
	}
	if s, _ := get(t, base+"/Patient/demo-other", token); s != 404 {
		t.Errorf("another patient with her token: %d, want 404", s)
	}
	if s, body := get(t, base+"/Observation?_summary=count", token); s != 200 || !strings.Contains(body, `"total":4`) {
		t.Errorf("her Observations (4 of 5 in the demo data are hers): %d %s", s, body)
	}
}

// TestDemoClinicianAndEHRLaunch: the demo clinician signs in through the demo app and picks the patient; an EHR
// launch URL printed by `carta launch` brings the patient in context without a picker.
func TestDemoClinicianAndEHRLaunch(t *testing.T) {
	bin := browsertest.Chromium(t)
	base, data, passwords := demoServer(t)
	root := strings.TrimSuffix(base, "/fhir")
	step := browsertest.Open(t, bin, root+"/demo/launch")
	browsertest.Must(t, "clinician signs in and picks the patient", chromedp.Do(step,
		chromedp.WaitVisible(chromedp.CSS(`#username`)),
		chromedp.SendKeys(chromedp.CSS(`#username`), "demo-doctor"),
		chromedp.SendKeys(chromedp.CSS(`#password`), passwords["demo-doctor"]),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#q`)),
		chromedp.SendKeys(chromedp.CSS(`#q`), "Rivera"),
		chromedp.Click(chromedp.CSS(`form[method=get] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`input[name=patient][value="demo-patient"]`)),
		chromedp.Click(chromedp.CSS(`input[name=patient][value="demo-patient"]`)),
		chromedp.Click(chromedp.CSS(`form[method=post] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`button[value=approve]`)),
		chromedp.Click(chromedp.CSS(`button[value=approve]`)),
		chromedp.WaitVisible(chromedp.CSS(`#token`)),
	))
	text, err := chromedp.Run(step, chromedp.Text(chromedp.CSS(`main`)))
	browsertest.Must(t, "result page", err)
	if !strings.Contains(text, "Practitioner/demo-doctor") || !strings.Contains(text, "Jamie Rivera") {
		t.Errorf("clinician's connected page:\n%s", text)
	}

	out, errOut, code := runCmd(t, "launch", "--data", data, "--client", "carta-demo", "--patient", "demo-patient", "--user", "Practitioner/demo-doctor")
	if code != 0 || !strings.HasPrefix(out, root+"/demo/launch?") {
		t.Fatalf("carta launch: %d %s %s", code, out, errOut)
	}
	ehr := browsertest.Open(t, bin, out)
	browsertest.Must(t, "EHR launch", chromedp.Do(ehr,
		chromedp.WaitVisible(chromedp.CSS(`#username`)),
		chromedp.SendKeys(chromedp.CSS(`#username`), "demo-doctor"),
		chromedp.SendKeys(chromedp.CSS(`#password`), passwords["demo-doctor"]),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`button[value=approve]`)),
		chromedp.Click(chromedp.CSS(`button[value=approve]`)),
		chromedp.WaitVisible(chromedp.CSS(`#token`)),
	))
	token, err := chromedp.Run(ehr, chromedp.Value(chromedp.CSS(`#token`)))
	browsertest.Must(t, "token", err)
	var claims struct {
		Patient string `json:"patient"`
		Scope   string `json:"scope"`
	}
	c := jwtPayload(t, token)
	if err := json.Unmarshal(c, &claims); err != nil {
		t.Fatal(err)
	}
	if claims.Patient != "demo-patient" || !strings.Contains(claims.Scope, "launch") {
		t.Errorf("EHR launch token claims %s", c)
	}
}

// jwtPayload is the decoded payload of a JWT (not verified: the server under test verifies it when it is used).
func jwtPayload(t *testing.T, tok string) []byte {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDemoRestart: a second `carta serve --demo` on the same data keeps the records as they are (no second
// load), gives the logins new passwords, and a demo launch naming another server is refused.
func TestDemoRestart(t *testing.T) {
	data := t.TempDir()
	t.Setenv("CARTA_DATABASE_URL", "")
	_, stop, banner1 := startWithBanner(t, "--data", data, "--demo")
	stop()
	base, stop, banner2 := startWithBanner(t, "--data", data, "--demo")
	defer stop()
	p1, p2 := demoPasswordRE.FindStringSubmatch(banner1), demoPasswordRE.FindStringSubmatch(banner2)
	if p1 == nil || p2 == nil || p1[2] == p2[2] {
		t.Fatalf("passwords across restarts: %v %v", p1, p2)
	}
	tok, _, _ := runCmd(t, "token", "--data", data, "--system", "--scope", "system/*.rs")
	if s, body := get(t, base+"/Patient/demo-patient/_history", tok); s != 200 || !strings.Contains(body, `"total":1`) {
		t.Errorf("the demo patient was written again on restart: %d %.300s", s, body)
	}
	root := strings.TrimSuffix(base, "/fhir")
	// On plain-http loopback the cookies work without Secure (and stay HttpOnly and SameSite).
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	u := root + "/demo/launch"
	for _, step := range []string{"the demo app's cookie", "the sign-in cookie"} {
		res, err := noFollow.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		ck := res.Header.Get("Set-Cookie")
		if res.StatusCode != 302 || ck == "" || strings.Contains(ck, "Secure") || !strings.Contains(ck, "HttpOnly") || !strings.Contains(ck, "SameSite=Lax") {
			t.Fatalf("%s from %s: %d %q", step, u, res.StatusCode, ck)
		}
		u = res.Header.Get("Location") // on to the authorization endpoint
	}
	if s, body := get(t, root+"/demo/launch?iss=https%3A%2F%2Fevil.example%2Ffhir&launch=x", ""); s != 400 || !strings.Contains(body, "another server") {
		t.Errorf("a launch for another server: %d %.300s", s, body)
	}
}
