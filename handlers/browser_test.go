package handlers_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/carta-fhir/carta/handlers/browsertest"
	"github.com/carta-fhir/carta/store"
	"github.com/carta-fhir/carta/store/storetest"
	"github.com/chromedp/chromedp"
)

// browserApp is an app's redirect endpoint for the page tests: it hands the query it was called with to the test.
type browserApp struct {
	redirect string
	got      chan url.Values
}

// newBrowserApp registers a public client "web" whose redirect URI is a local test server.
func newBrowserApp(t *testing.T, e *env) *browserApp {
	a := &browserApp{got: make(chan url.Values, 1)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case a.got <- r.URL.Query():
		default:
		}
		w.Write([]byte("<!doctype html><title>app</title><p>signed in</p>"))
	}))
	t.Cleanup(srv.Close)
	a.redirect = srv.URL + "/callback"
	if err := e.store.PutClient(context.Background(), &store.Client{ID: "web", Name: "Browser App", Kind: "public", RedirectURIs: a.redirect}); err != nil {
		t.Fatal(err)
	}
	return a
}

// reached waits for the browser to arrive at the app.
func (a *browserApp) reached(t *testing.T) url.Values {
	t.Helper()
	select {
	case q := <-a.got:
		return q
	case <-time.After(10 * time.Second):
		t.Fatal("the browser never reached the app")
		return nil
	}
}

// authorizeURL is a standalone-launch authorization request from the "web" client.
func authorizeURL(e *env, a *browserApp, scope, challenge string) string {
	q := url.Values{"response_type": {"code"}, "client_id": {"web"}, "redirect_uri": {a.redirect}, "state": {"xyz"}, "aud": {e.base},
		"scope": {scope}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}
	return e.srv.URL + "/auth/authorize?" + q.Encode()
}

// TestLoginAndConsentInChromium drives the real pages in headless Chromium: sign in, untick one kind of record,
// allow, and land on the app with a code whose token lacks what was unticked.
func TestLoginAndConsentInChromium(t *testing.T) {
	bin := browsertest.Chromium(t)
	e := newEnv(t, storetest.Backends(t)[0])
	f := newAuthFixture(t, e)
	app := newBrowserApp(t, e)
	verifier, challenge := pkce()
	step := browsertest.Open(t, bin, authorizeURL(e, app, "launch/patient openid fhirUser patient/Patient.rs patient/Observation.rs", challenge))
	browsertest.Must(t, "login page", chromedp.Do(step, chromedp.WaitVisible(chromedp.CSS(`#username`))))
	labelled, err := chromedp.Run(step, chromedp.Evaluate[string](`[...document.querySelectorAll('input:not([type=hidden])')].every(i => document.querySelector('label[for="'+i.id+'"]')) ? "yes" : "no"`))
	browsertest.Must(t, "labels", err)
	appName, err := chromedp.Run(step, chromedp.Text(chromedp.CSS(`.app`)))
	browsertest.Must(t, "app name", err)
	browsertest.Must(t, "sign in", chromedp.Do(step,
		chromedp.SendKeys(chromedp.CSS(`#username`), "alice"),
		chromedp.SendKeys(chromedp.CSS(`#password`), password),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`input[name=keep][value="patient/Observation"]`)),
	))
	consentText, err := chromedp.Run(step, chromedp.Text(chromedp.CSS(`main`)))
	browsertest.Must(t, "consent text", err)
	browsertest.Must(t, "consent", chromedp.Do(step,
		chromedp.Click(chromedp.CSS(`input[name=keep][value="patient/Observation"]`)),
		chromedp.Click(chromedp.CSS(`button[value=approve]`)),
	))
	if labelled != "yes" {
		t.Error("the login form has inputs without labels")
	}
	if appName != "Browser App" {
		t.Errorf("login page names the app %q", appName)
	}
	if !strings.Contains(consentText, "Observation") || !strings.Contains(consentText, "Know which record is yours") {
		t.Errorf("consent page does not say what is asked: %s", consentText)
	}
	params := app.reached(t)
	if params.Get("state") != "xyz" || params.Get("code") == "" {
		t.Fatalf("app got %v", params)
	}
	form := url.Values{"grant_type": {"authorization_code"}, "code": {params.Get("code")}, "code_verifier": {verifier}, "redirect_uri": {app.redirect}, "client_id": {"web"}}
	r := f.tokenRequest(t, form, "", "")
	if r.status != 200 || r.str("scope") != "launch/patient openid fhirUser patient/Patient.rs" || r.str("patient") != "alice" {
		t.Fatalf("token after consent in the browser: %v", r.body)
	}
}

// TestWrongPasswordAndDenyInChromium: a wrong password keeps the user on the sign-in page with an error the
// screen reader announces; "Don't allow" sends the browser back to the app with access_denied and no code.
func TestWrongPasswordAndDenyInChromium(t *testing.T) {
	bin := browsertest.Chromium(t)
	e := newEnv(t, storetest.Backends(t)[0])
	newAuthFixture(t, e)
	app := newBrowserApp(t, e)
	_, challenge := pkce()
	step := browsertest.Open(t, bin, authorizeURL(e, app, "launch/patient openid fhirUser patient/Patient.rs", challenge))
	browsertest.Must(t, "wrong password", chromedp.Do(step,
		chromedp.WaitVisible(chromedp.CSS(`#username`)),
		chromedp.SendKeys(chromedp.CSS(`#username`), "alice"),
		chromedp.SendKeys(chromedp.CSS(`#password`), "not the password"),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`p.error[role=alert]`)),
	))
	msg, err := chromedp.Run(step, chromedp.Text(chromedp.CSS(`p.error`)))
	browsertest.Must(t, "error text", err)
	if strings.Contains(strings.ToLower(msg), "alice") || msg == "" {
		t.Errorf("sign-in error %q should say the details were wrong without naming the account", msg)
	}
	browsertest.Must(t, "sign in and deny", chromedp.Do(step,
		chromedp.SendKeys(chromedp.CSS(`#password`), password),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`button[value=deny]`)),
		chromedp.Click(chromedp.CSS(`button[value=deny]`)),
	))
	params := app.reached(t)
	if params.Get("error") != "access_denied" || params.Get("state") != "xyz" || params.Has("code") {
		t.Fatalf("after deny the app got %v", params)
	}
}
