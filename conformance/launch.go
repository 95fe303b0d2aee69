package conformance

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os/exec"
	"strings"

	"golang.org/x/net/html"
)

const smartLaunch = "SMART App Launch 2.2.0 app-launch.html"

// LaunchClient is a SMART app registered at the server under test, and how to sign in: a username and password
// for an HTML login form the suite fills in (and the consent page it approves), or a command that, given the
// authorize URL as its argument, signs in by whatever means and prints the URL the browser was finally sent to
// (the redirect URI with code and state).
type LaunchClient struct {
	ClientID     string   `json:"clientId"`
	ClientSecret string   `json:"clientSecret,omitempty"` // confidential symmetric clients
	RedirectURI  string   `json:"redirectUri"`
	Scope        string   `json:"scope,omitempty"`
	Username     string   `json:"username,omitempty"`
	Password     string   `json:"password,omitempty"`
	LoginCommand []string `json:"loginCommand,omitempty"`
}

// flow is one authorization request.
type flow struct {
	params   url.Values
	verifier string
}

// newFlow is a correct standalone-launch authorization request.
func (t *T) newFlow(lc *LaunchClient) *flow {
	verifier := randomID() + randomID()
	sum := sha256.Sum256([]byte(verifier))
	return &flow{verifier: verifier, params: url.Values{
		"response_type": {"code"}, "client_id": {lc.ClientID}, "redirect_uri": {lc.RedirectURI}, "scope": {lc.Scope},
		"state": {randomID()}, "aud": {t.Config().Base},
		"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"},
	}}
}

// launchClient is the configured app (skip without one) and the authorization endpoint (omit when the server
// declares no standalone launch).
func (t *T) launchClient() (*LaunchClient, string) {
	sc := t.needSMART()
	if !hasCapability(sc, "launch-standalone") || str(sc, "authorization_endpoint") == "" {
		t.Omitf("the server declares no standalone launch")
	}
	lc := t.Config().Launch
	if lc == nil {
		t.Skipf("needs a registered app and a way to sign in (launch: clientId, redirectUri, username/password or loginCommand)")
	}
	return lc, t.endpoint("authorization_endpoint")
}

// authorize runs an authorization request through the sign-in and returns where the browser was sent: the
// redirect URI's query (code and state, or error), or an error when the flow ended elsewhere (an error page).
func (t *T) authorize(lc *LaunchClient, endpoint string, f *flow) (url.Values, error) {
	u := endpoint + "?" + f.params.Encode()
	if len(lc.LoginCommand) > 0 {
		cmd := exec.CommandContext(t.ctx, lc.LoginCommand[0], append(lc.LoginCommand[1:], u)...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		t.exchanges = append(t.exchanges, Exchange{Method: "LOGIN", URL: u})
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("the login command failed: %v: %s", err, errb.String())
		}
		final := strings.TrimSpace(out.String())
		if !strings.HasPrefix(final, lc.RedirectURI) {
			return nil, fmt.Errorf("the flow did not come back to the redirect URI: %q", final)
		}
		p, err := url.Parse(final)
		if err != nil {
			return nil, err
		}
		return p.Query(), nil
	}
	return t.formLogin(lc, u)
}

// formLogin signs in through HTML forms: it fills in the username and password, keeps hidden fields and checked
// boxes, picks the first choice where one is asked (a patient picker), approves consent, and follows redirects
// until the browser would be sent to the redirect URI.
func (t *T) formLogin(lc *LaunchClient, start string) (url.Values, error) {
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: t.r.Client.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	method, target, body := http.MethodGet, start, url.Values(nil)
	for step := 0; step < 12; step++ {
		if strings.HasPrefix(target, lc.RedirectURI) {
			p, err := url.Parse(target)
			if err != nil {
				return nil, err
			}
			return p.Query(), nil
		}
		var rd io.Reader
		if body != nil {
			rd = strings.NewReader(body.Encode())
		}
		req, err := http.NewRequestWithContext(t.ctx, method, target, rd)
		if err != nil {
			return nil, err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		ex := Exchange{Method: method, URL: target}
		if body != nil {
			ex.RequestBody = secretField.ReplaceAllString(body.Encode(), "${1}(redacted)")
		}
		res, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		page, _ := io.ReadAll(io.LimitReader(res.Body, 4<<20))
		res.Body.Close()
		ex.Status, ex.ResponseHeaders = res.StatusCode, shownHeaders(res.Header)
		t.exchanges = append(t.exchanges, ex)
		if loc := res.Header.Get("Location"); res.StatusCode >= 300 && res.StatusCode < 400 && loc != "" {
			next, err := res.Request.URL.Parse(loc)
			if err != nil {
				return nil, err
			}
			method, target, body = http.MethodGet, next.String(), nil
			continue
		}
		if res.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("the sign-in ended with status %d at %s", res.StatusCode, target)
		}
		m, action, fields, err := parseForm(page, lc)
		if err != nil {
			return nil, fmt.Errorf("at %s: %w", target, err)
		}
		next, err := res.Request.URL.Parse(action)
		if err != nil {
			return nil, err
		}
		if m == http.MethodGet {
			next.RawQuery = fields.Encode()
			method, target, body = m, next.String(), nil
		} else {
			method, target, body = m, next.String(), fields
		}
	}
	return nil, errors.New("the sign-in did not finish within 12 steps")
}

// parseForm finds the page's form and fills it in.
func parseForm(page []byte, lc *LaunchClient) (string, string, url.Values, error) {
	doc, err := html.Parse(bytes.NewReader(page))
	if err != nil {
		return "", "", nil, err
	}
	attr := func(n *html.Node, k string) string {
		for _, a := range n.Attr {
			if strings.EqualFold(a.Key, k) {
				return a.Val
			}
		}
		return ""
	}
	var form *html.Node
	var find func(*html.Node)
	find = func(n *html.Node) {
		if form != nil {
			return
		}
		if n.Type == html.ElementNode && n.Data == "form" && strings.EqualFold(attr(n, "method"), "post") {
			form = n
			return
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			find(c)
		}
	}
	find(doc)
	if form == nil {
		return "", "", nil, errors.New("no form to fill in (an error page?)")
	}
	fields := url.Values{}
	radios := map[string]bool{}
	submitted := false
	var walkForm func(*html.Node)
	walkForm = func(n *html.Node) {
		if n.Type == html.ElementNode {
			name := attr(n, "name")
			switch n.Data {
			case "input":
				switch strings.ToLower(attr(n, "type")) {
				case "hidden":
					fields.Add(name, attr(n, "value"))
				case "password":
					fields.Set(name, lc.Password)
				case "checkbox":
					if _, checked := attrPresent(n, "checked"); checked {
						fields.Add(name, valueOr(attr(n, "value"), "on"))
					}
				case "radio":
					if !radios[name] {
						radios[name] = true
						fields.Set(name, attr(n, "value"))
					}
				case "submit":
				case "", "text", "email":
					low := strings.ToLower(name)
					if strings.Contains(low, "user") || strings.Contains(low, "login") || strings.Contains(low, "email") {
						fields.Set(name, lc.Username)
					} else if name != "" {
						fields.Set(name, attr(n, "value"))
					}
				}
			case "button":
				t := strings.ToLower(attr(n, "type"))
				if (t == "" || t == "submit") && name != "" && !submitted {
					v := attr(n, "value")
					if low := strings.ToLower(v); low == "deny" || low == "cancel" || strings.Contains(low, "don") {
						break
					}
					fields.Set(name, v)
					submitted = true
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walkForm(c)
		}
	}
	walkForm(form)
	return http.MethodPost, valueOr(attr(form, "action"), ""), fields, nil
}

func attrPresent(n *html.Node, k string) (string, bool) {
	for _, a := range n.Attr {
		if strings.EqualFold(a.Key, k) {
			return a.Val, true
		}
	}
	return "", false
}

func valueOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// tokenRequest posts to the token endpoint as the app (client_id in the body, or HTTP Basic for a confidential
// client).
func (t *T) tokenRequest(lc *LaunchClient, form url.Values) *Resp {
	q := Req{Form: form}
	if lc.ClientSecret != "" {
		q.Header = map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(lc.ClientID)+":"+url.QueryEscape(lc.ClientSecret)))}
	} else {
		form.Set("client_id", lc.ClientID)
	}
	return t.Do(http.MethodPost, t.tokenEndpoint(), q)
}

// codeFor runs a correct flow and returns its code; the test fails when sign-in cannot be scripted.
func (t *T) codeFor(lc *LaunchClient, endpoint string) (*flow, string) {
	f := t.newFlow(lc)
	q, err := t.authorize(lc, endpoint, f)
	if err != nil {
		t.Fatalf("a correct authorization request did not come back with a code: %v", err)
	}
	if q.Get("code") == "" {
		t.Fatalf("a correct authorization request came back without a code: %v", q)
	}
	return f, q.Get("code")
}

// launchWorks skips a negative test when the positive flow cannot be completed (so a broken sign-in script
// never passes as a refusal).
func (t *T) launchWorks(lc *LaunchClient, endpoint string) {
	v, _ := t.remember("launch-works", func() (any, error) {
		q, err := t.authorize(lc, endpoint, t.newFlow(lc))
		return err == nil && q.Get("code") != "", nil
	})
	if ok, _ := v.(bool); !ok {
		t.Skipf("a correct launch cannot be completed with the sign-in given, so a refusal here would prove nothing")
	}
}

// noCode checks that an authorization request the server must refuse gives no code.
func (t *T) noCode(lc *LaunchClient, endpoint string, f *flow) {
	t.launchWorks(lc, endpoint)
	q, err := t.authorize(lc, endpoint, f)
	if err != nil {
		t.Logf("refused before coming back: %v", err)
		return
	}
	t.Check(q.Get("code") == "", "the server issued a code: %v", q)
	if q.Get("error") != "" {
		t.Check(q.Get("state") == f.params.Get("state"), "the error redirect does not echo state: %v", q)
	}
}

func launchGroup() Group {
	return Group{ID: "launch", Title: "SMART App Launch", Description: "A standalone launch of a registered app, signing in by a scripted HTML form or a login command: state, PKCE, audience, codes, refresh and revocation.", Tests: []Test{
		{ID: "launch-standalone", Title: "A standalone launch gets a code with the state echoed, and a token for it",
			Description: "Authorize with PKCE S256, sign in, approve: the redirect carries a code and the same state; the code with its verifier gets an access token (bearer, scope, expires_in, and patient when launch/patient was asked) that reads the patient's record.",
			Requirement: smartLaunch + "#obtain-authorization-code",
			Run: func(t *T) {
				lc, ep := t.launchClient()
				f := t.newFlow(lc)
				q, err := t.authorize(lc, ep, f)
				if err != nil {
					t.Fatalf("%v", err)
				}
				t.Check(q.Get("code") != "", "no code: %v", q)
				t.Check(q.Get("state") == f.params.Get("state"), "state %q, want %q", q.Get("state"), f.params.Get("state"))
				r := t.tokenRequest(lc, url.Values{"grant_type": {"authorization_code"}, "code": {q.Get("code")}, "redirect_uri": {lc.RedirectURI}, "code_verifier": {f.verifier}})
				m := r.JSON()
				if r.Status != http.StatusOK || str(m, "access_token") == "" {
					t.Fatalf("token: status %d", r.Status)
				}
				t.Check(strings.EqualFold(str(m, "token_type"), "bearer"), "token_type %q", str(m, "token_type"))
				t.Check(str(m, "scope") != "" && m["expires_in"] != nil, "scope or expires_in missing")
				for g := range strings.FieldsSeq(str(m, "scope")) {
					t.Check(withinScopes(g, lc.Scope), "granted scope %q is more than was asked (%s)", g, lc.Scope)
				}
				t.Check(r.Header.Get("Cache-Control") == "no-store", "Cache-Control %q, want no-store", r.Header.Get("Cache-Control"))
				if strings.Contains(lc.Scope, "launch/patient") {
					p := str(m, "patient")
					t.Check(p != "", "launch/patient was asked but the token response names no patient")
					if p != "" {
						res := t.Get("Patient/"+p, str(m, "access_token"))
						t.Check(res.Status == http.StatusOK, "the token cannot read Patient/%s: %d", p, res.Status)
					}
				}
			}},
		{ID: "launch-pkce-missing", Title: "Without PKCE there is no code", Description: "An authorization request without code_challenge gets no code.",
			Requirement: smartLaunch + "#request-authorization-code",
			Run: func(t *T) {
				lc, ep := t.launchClient()
				f := t.newFlow(lc)
				f.params.Del("code_challenge")
				f.params.Del("code_challenge_method")
				t.noCode(lc, ep, f)
			}},
		{ID: "launch-pkce-plain", Title: "PKCE plain is refused", Description: "code_challenge_method=plain gets no code (SMART requires S256).",
			Requirement: smartLaunch + "#request-authorization-code",
			Run: func(t *T) {
				lc, ep := t.launchClient()
				f := t.newFlow(lc)
				f.params.Set("code_challenge", f.verifier)
				f.params.Set("code_challenge_method", "plain")
				t.noCode(lc, ep, f)
			}},
		{ID: "launch-pkce-verifier", Title: "A code is refused with a blank or wrong verifier",
			Description: "The code exchanged with an empty code_verifier, then with a wrong one → invalid_grant each time.",
			Requirement: "RFC 7636 section 4.6",
			Run: func(t *T) {
				lc, ep := t.launchClient()
				for _, v := range []string{"", randomID() + randomID()} {
					_, code := t.codeFor(lc, ep)
					r := t.tokenRequest(lc, url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {lc.RedirectURI}, "code_verifier": {v}})
					t.oauthError(r, []int{400, 401}, "invalid_grant", "invalid_request")
				}
			}},
		{ID: "launch-wrong-aud", Title: "An authorization request for another audience gets no code",
			Description: "aud naming another FHIR server gets no code.",
			Requirement: smartLaunch + "#request-authorization-code",
			Run: func(t *T) {
				lc, ep := t.launchClient()
				f := t.newFlow(lc)
				f.params.Set("aud", "https://fhir.not-this-server.example.org/r4")
				t.noCode(lc, ep, f)
			}},
		{ID: "launch-code-reuse", Title: "A code works once", Description: "The same code exchanged a second time → invalid_grant.",
			Requirement: "RFC 6749 section 4.1.2",
			Run: func(t *T) {
				lc, ep := t.launchClient()
				f, code := t.codeFor(lc, ep)
				form := func() url.Values {
					return url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {lc.RedirectURI}, "code_verifier": {f.verifier}}
				}
				if r := t.tokenRequest(lc, form()); r.Status != http.StatusOK {
					t.Fatalf("first exchange: status %d", r.Status)
				}
				t.oauthError(t.tokenRequest(lc, form()), []int{400, 401}, "invalid_grant")
			}},
		{ID: "launch-refresh-narrower", Title: "A refresh may ask for less, never for more",
			Description: "With offline_access or online_access: refreshing with a narrower scope gets at most that scope; asking for a scope never granted is refused.",
			Requirement: smartLaunch + "#refresh-access-token",
			Run: func(t *T) {
				lc, ep := t.launchClient()
				f, code := t.codeFor(lc, ep)
				r := t.tokenRequest(lc, url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {lc.RedirectURI}, "code_verifier": {f.verifier}})
				m := r.JSON()
				rt := str(m, "refresh_token")
				if rt == "" {
					t.Skipf("no refresh token was issued for scope %q", lc.Scope)
				}
				var resource []string
				for s := range strings.FieldsSeq(str(m, "scope")) {
					if strings.Contains(s, "/") && !strings.HasPrefix(s, "launch") {
						resource = append(resource, s)
					}
				}
				if len(resource) == 0 {
					t.Skipf("the token has no resource scope to narrow")
				}
				narrow := resource[0]
				n := t.tokenRequest(lc, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "scope": {narrow}})
				nm := n.JSON()
				t.Check(n.Status == http.StatusOK && str(nm, "access_token") != "", "narrower refresh: status %d", n.Status)
				for s := range strings.FieldsSeq(str(nm, "scope")) {
					t.Check(s == narrow || !strings.Contains(s, "/"), "the narrower refresh granted %q beyond %q", s, narrow)
				}
				if next := str(nm, "refresh_token"); next != "" {
					rt = next
				}
				w := t.tokenRequest(lc, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "scope": {str(m, "scope") + " system/*.cruds"}})
				t.oauthError(w, []int{400, 401}, "invalid_scope", "invalid_grant")
			}},
		{ID: "launch-revoked", Title: "A revoked token is refused", Description: "After revocation (RFC 7009) the access token gets 401 on the FHIR API, and the refresh token no longer refreshes.",
			Requirement: "RFC 7009 section 2.2",
			Run: func(t *T) {
				lc, ep := t.launchClient()
				re := t.endpoint("revocation_endpoint")
				if re == "" {
					t.Omitf("no revocation_endpoint is advertised")
				}
				f, code := t.codeFor(lc, ep)
				m := t.tokenRequest(lc, url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {lc.RedirectURI}, "code_verifier": {f.verifier}}).JSON()
				at, rt := str(m, "access_token"), str(m, "refresh_token")
				if at == "" {
					t.Fatalf("no access token")
				}
				revoke := func(tok string) {
					q := Req{Form: url.Values{"token": {tok}}}
					if lc.ClientSecret != "" {
						q.Header = map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(lc.ClientID)+":"+url.QueryEscape(lc.ClientSecret)))}
					} else {
						q.Form.Set("client_id", lc.ClientID)
					}
					r := t.Do(http.MethodPost, re, q)
					t.Check(r.Status == http.StatusOK, "revocation: status %d, want 200", r.Status)
				}
				revoke(at)
				path := "Patient?_count=1"
				if p := str(m, "patient"); p != "" {
					path = "Patient/" + p
				}
				g := t.Get(path, at)
				t.Check(g.Status == http.StatusUnauthorized, "the revoked access token: status %d, want 401", g.Status)
				if rt != "" {
					revoke(rt)
					t.oauthError(t.tokenRequest(lc, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}), []int{400, 401}, "invalid_grant")
				}
			}},
	}}
}

// withinScopes reports whether a granted scope is one of the asked ones or narrower: the same context and type
// (or a wildcard asked) with a subset of the permissions, SMART v1 (read, write, *) and v2 (cruds) alike.
func withinScopes(granted, asked string) bool {
	split := func(s string) (ctx, typ, perms string, ok bool) {
		c, rest, found := strings.Cut(s, "/")
		if !found {
			return "", "", "", false
		}
		ty, p, found := strings.Cut(rest, ".")
		if !found {
			return "", "", "", false
		}
		p, _, _ = strings.Cut(p, "?")
		switch p {
		case "read":
			p = "rs"
		case "write":
			p = "cud"
		case "*":
			p = "cruds"
		}
		return c, ty, p, true
	}
	gc, gt, gp, gok := split(granted)
	for a := range strings.FieldsSeq(asked) {
		if a == granted {
			return true
		}
		ac, at, ap, aok := split(a)
		if !gok || !aok || gc != ac || (at != "*" && at != gt) {
			continue
		}
		all := true
		for _, c := range gp {
			all = all && strings.ContainsRune(ap, c)
		}
		if all {
			return true
		}
	}
	return false
}
