package handlers_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/store"
	"github.com/golang-jwt/jwt/v5"
)

// authFixture registers apps and people on a running server.
type authFixture struct {
	*env
	rsaKey *rsa.PrivateKey
	ecKey  *ecdsa.PrivateKey
}

const (
	appRedirect = "https://app.example/callback"
	password    = "correct horse battery"
)

func newAuthFixture(t *testing.T, e *env) *authFixture {
	t.Helper()
	ctx := context.Background()
	sys := e.system()
	e.must(201, "PUT", "/Patient/alice", sys, `{"resourceType":"Patient","id":"alice","name":[{"family":"Liddell","given":["Alice"]}],"birthDate":"1990-05-04"}`)
	e.must(201, "PUT", "/Patient/bob", sys, `{"resourceType":"Patient","id":"bob","name":[{"family":"Builder","given":["Bob"]}]}`)
	e.must(201, "PUT", "/Observation/oa", sys, `{"resourceType":"Observation","id":"oa","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/alice"}}`)
	e.must(201, "PUT", "/Practitioner/doc", sys, `{"resourceType":"Practitioner","id":"doc","name":[{"family":"Who"}]}`)
	e.must(201, "PUT", "/RelatedPerson/mum", sys, `{"resourceType":"RelatedPerson","id":"mum","patient":{"reference":"Patient/alice"}}`)
	hash, _ := auth.HashSecret(password)
	for _, u := range []store.User{{Username: "alice", FHIRUser: "Patient/alice"}, {Username: "doc", FHIRUser: "Practitioner/doc"}, {Username: "mum", FHIRUser: "RelatedPerson/mum"}} {
		u.PasswordHash = hash
		if err := e.store.PutUser(ctx, &u); err != nil {
			t.Fatal(err)
		}
	}
	secretHash, _ := auth.HashSecret("s3cret-s3cret-s3cret")
	f := &authFixture{env: e}
	f.rsaKey, _ = rsa.GenerateKey(rand.Reader, 2048)
	f.ecKey, _ = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	jwks := jwksOf(t, map[string]any{"rsa1": &f.rsaKey.PublicKey, "ec1": &f.ecKey.PublicKey})
	for _, c := range []store.Client{
		{ID: "app", Name: "Health Diary", Kind: "public", RedirectURIs: appRedirect, LaunchURI: "https://app.example/launch"},
		{ID: "conf", Name: "Clinic Portal", Kind: "confidential", RedirectURIs: appRedirect, SecretHash: secretHash},
		{ID: "hie", Name: "Exchange", Kind: "backend", Scopes: "system/Patient.rs system/Observation.rs", JWKS: jwks},
		{ID: "narrow", Name: "Narrow", Kind: "public", RedirectURIs: appRedirect, Scopes: "patient/Patient.rs openid fhirUser"},
	} {
		if err := e.store.PutClient(ctx, &c); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func jwksOf(t *testing.T, keys map[string]any) string {
	st := jwkset.NewMemoryStorage()
	for kid, k := range keys {
		alg := jwkset.AlgRS384
		if _, ok := k.(*ecdsa.PublicKey); ok {
			alg = jwkset.AlgES384
		}
		jwk, err := jwkset.NewJWKFromKey(k, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: alg, USE: jwkset.UseSig}})
		if err != nil {
			t.Fatal(err)
		}
		st.KeyWrite(context.Background(), jwk)
	}
	b, _ := st.JSONPublic(context.Background())
	return string(b)
}

func pkce() (verifier, challenge string) {
	b := make([]byte, 32)
	rand.Read(b)
	verifier = base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// browser follows the server's own redirects and stops at the app's.
type browser struct {
	t    *testing.T
	c    *http.Client
	base string
}

func newBrowser(t *testing.T, e *env) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: e.srv.URL, c: &http.Client{Jar: jar, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if !strings.HasPrefix(req.URL.String(), e.srv.URL) {
			return http.ErrUseLastResponse
		}
		return nil
	}}}
}

type page struct {
	status   int
	body     string
	location string // set when the server sent the browser to the app
	url      string
}

func (b *browser) do(req *http.Request) page {
	b.t.Helper()
	res, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return page{status: res.StatusCode, body: string(body), location: res.Header.Get("Location"), url: res.Request.URL.String()}
}

func (b *browser) get(u string) page {
	req, _ := http.NewRequest("GET", u, nil)
	return b.do(req)
}

func (b *browser) post(u string, form url.Values) page {
	req, _ := http.NewRequest("POST", u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrf(t *testing.T, p page) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("no CSRF token on %s (%d): %s", p.url, p.status, p.body)
	}
	return m[1]
}

func authParams(client, scope, challenge string) url.Values {
	return url.Values{"response_type": {"code"}, "client_id": {client}, "redirect_uri": {appRedirect}, "scope": {scope},
		"state": {"st-" + client}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}
}

// signIn walks authorize → login → (patient) → consent and returns where the server sent the browser at the end.
func (f *authFixture) signIn(t *testing.T, b *browser, params url.Values, user string, keep func([]string) []string) page {
	t.Helper()
	if params.Get("aud") == "" {
		params.Set("aud", f.base)
	}
	p := b.get(f.srv.URL + "/auth/authorize?" + params.Encode())
	if p.location != "" {
		return p
	}
	p = b.post(f.srv.URL+"/auth/login", url.Values{"csrf": {csrf(t, p)}, "username": {user}, "password": {password}})
	if strings.Contains(p.url, "/auth/patient") {
		p = b.get(f.srv.URL + "/auth/patient?q=liddell")
		if !strings.Contains(p.body, `value="alice"`) {
			t.Fatalf("patient picker does not offer alice: %s", p.body)
		}
		p = b.post(f.srv.URL+"/auth/patient", url.Values{"csrf": {csrf(t, p)}, "patient": {"alice"}})
	}
	if !strings.Contains(p.url, "/auth/consent") || p.status != 200 {
		t.Fatalf("expected the consent page, got %s %d: %s", p.url, p.status, p.body)
	}
	var keys []string
	for _, m := range regexp.MustCompile(`name="keep" value="([^"]+)"`).FindAllStringSubmatch(p.body, -1) {
		keys = append(keys, m[1])
	}
	if keep != nil {
		keys = keep(keys)
	}
	return b.post(f.srv.URL+"/auth/consent", url.Values{"csrf": {csrf(t, p)}, "action": {"approve"}, "keep": keys})
}

func redirectParams(t *testing.T, p page) url.Values {
	t.Helper()
	if !strings.HasPrefix(p.location, appRedirect) {
		t.Fatalf("expected a redirect to the app, got %d %q: %s", p.status, p.location, p.body)
	}
	u, _ := url.Parse(p.location)
	return u.Query()
}

type tokenResp struct {
	status int
	header http.Header
	body   map[string]any
}

func (f *authFixture) tokenRequest(t *testing.T, form url.Values, basicUser, basicPass string) tokenResp {
	t.Helper()
	req, _ := http.NewRequest("POST", f.srv.URL+"/auth/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basicUser != "" {
		req.SetBasicAuth(url.QueryEscape(basicUser), url.QueryEscape(basicPass))
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body map[string]any
	json.NewDecoder(res.Body).Decode(&body)
	return tokenResp{status: res.StatusCode, header: res.Header, body: body}
}

func (r tokenResp) str(k string) string { s, _ := r.body[k].(string); return s }

func wantOAuthError(t *testing.T, r tokenResp, status int, code string) {
	t.Helper()
	if r.status != status || r.str("error") != code {
		t.Fatalf("got %d %v, want %d %s", r.status, r.body, status, code)
	}
}

// codeFor runs a whole sign-in and returns the code and PKCE verifier.
func (f *authFixture) codeFor(t *testing.T, client, scope, user string) (code, verifier string) {
	t.Helper()
	verifier, challenge := pkce()
	q := redirectParams(t, f.signIn(t, newBrowser(t, f.env), authParams(client, scope, challenge), user, nil))
	if q.Get("state") != "st-"+client || q.Get("code") == "" {
		t.Fatalf("redirect params %v", q)
	}
	return q.Get("code"), verifier
}

func exchange(code, verifier, client string) url.Values {
	return url.Values{"grant_type": {"authorization_code"}, "code": {code}, "code_verifier": {verifier}, "redirect_uri": {appRedirect}, "client_id": {client}}
}

func TestDiscovery(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		r := e.do("GET", "/.well-known/smart-configuration", "", "", "Accept: application/fhir+json", "Origin: https://app.example")
		if r.status != 200 || r.header.Get("Content-Type") != "application/json" || r.header.Get("Access-Control-Allow-Origin") != "*" {
			t.Fatalf("smart-configuration: %d %v", r.status, r.header)
		}
		var cfg map[string]any
		json.Unmarshal(r.body, &cfg)
		for _, k := range []string{"issuer", "jwks_uri", "authorization_endpoint", "token_endpoint", "introspection_endpoint", "revocation_endpoint"} {
			if s, _ := cfg[k].(string); !strings.HasPrefix(s, "http") {
				t.Errorf("%s = %v, want an absolute URL", k, cfg[k])
			}
		}
		if fmt.Sprint(cfg["code_challenge_methods_supported"]) != "[S256]" {
			t.Errorf("code_challenge_methods_supported %v", cfg["code_challenge_methods_supported"])
		}
		caps := fmt.Sprint(cfg["capabilities"])
		for _, c := range auth.Capabilities {
			if !strings.Contains(caps, c) {
				t.Errorf("capability %s missing", c)
			}
		}
		if r := e.do("GET", e.srv.URL+"/.well-known/openid-configuration", "", ""); r.status != 200 || !strings.Contains(string(r.body), `"RS256"`) {
			t.Errorf("openid-configuration: %d %s", r.status, r.body)
		}
		if r := e.do("GET", e.srv.URL+"/auth/style.json", "", ""); r.status != 200 {
			t.Errorf("style: %d", r.status)
		}
		r = e.must(200, "GET", "/metadata", "", "")
		if !strings.Contains(string(r.body), "oauth-uris") || !strings.Contains(string(r.body), `"valueUri":"`+e.srv.URL+`/auth/token"`) {
			t.Errorf("CapabilityStatement lacks the SMART security extension")
		}
	})
}

func TestStandalonePatientLaunch(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		f := newAuthFixture(t, e)
		code, verifier := f.codeFor(t, "app", "launch/patient openid fhirUser offline_access patient/*.rs", "alice")
		r := f.tokenRequest(t, exchange(code, verifier, "app"), "", "")
		if r.status != 200 || r.str("token_type") != "Bearer" || r.str("patient") != "alice" || r.str("refresh_token") == "" || r.str("id_token") == "" {
			t.Fatalf("token response: %d %v", r.status, r.body)
		}
		if r.header.Get("Cache-Control") != "no-store" || r.header.Get("Pragma") != "no-cache" {
			t.Errorf("token response cache headers: %v", r.header)
		}
		if r.body["expires_in"].(float64) > 3600 || r.body["need_patient_banner"] != false || !strings.HasSuffix(r.str("smart_style_url"), "/auth/style.json") {
			t.Errorf("token response: %v", r.body)
		}
		if r.str("scope") != "launch/patient openid fhirUser offline_access patient/*.rs" {
			t.Errorf("scope %q", r.str("scope"))
		}
		at := r.str("access_token")
		e.must(200, "GET", "/Patient/alice", at, "")
		e.must(200, "GET", "/Observation/oa", at, "")
		e.must(404, "GET", "/Patient/bob", at, "")
		// The ID token is RS256, for this client, and names the user's FHIR record.
		idc := jwt.MapClaims{}
		_, err := jwt.ParseWithClaims(r.str("id_token"), idc, func(tk *jwt.Token) (any, error) { return publishedKey(t, e, tk.Header["kid"]), nil },
			jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience("app"), jwt.WithIssuer(e.srv.URL))
		if err != nil || idc["fhirUser"] != e.base+"/Patient/alice" {
			t.Errorf("id_token: %v %v", err, idc)
		}
	})
}

// publishedKey returns the server's public key kid from its JWKS, as a relying party finds it.
func publishedKey(t *testing.T, e *env, kid any) any {
	r := e.must(200, "GET", e.srv.URL+"/.well-known/jwks.json", "", "")
	var set jwkset.JWKSMarshal
	if err := json.Unmarshal(r.body, &set); err != nil {
		t.Fatal(err)
	}
	keys, err := set.JWKSlice()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Marshal().KID == kid {
			return k.Key()
		}
	}
	t.Fatalf("no published key %v", kid)
	return nil
}

func TestConsentUntickAndRepresentative(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		f := newAuthFixture(t, e)
		verifier, challenge := pkce()
		p := f.signIn(t, newBrowser(t, e), authParams("app", "launch/patient patient/Patient.rs patient/Observation.rs", challenge), "alice",
			func(keys []string) []string {
				var out []string
				for _, k := range keys {
					if k != "patient/Observation" {
						out = append(out, k)
					}
				}
				return out
			})
		r := f.tokenRequest(t, exchange(redirectParams(t, p).Get("code"), verifier, "app"), "", "")
		if r.status != 200 || r.str("scope") != "launch/patient patient/Patient.rs" {
			t.Fatalf("granted %v", r.body)
		}
		e.must(200, "GET", "/Patient/alice", r.str("access_token"), "")
		e.must(403, "GET", "/Observation/oa", r.str("access_token"), "")
		// A representative gets the patient they act for.
		code, verifier := f.codeFor(t, "app", "launch/patient patient/*.rs", "mum")
		r = f.tokenRequest(t, exchange(code, verifier, "app"), "", "")
		if r.str("patient") != "alice" {
			t.Fatalf("representative's token: %v", r.body)
		}
		e.must(200, "GET", "/Observation/oa", r.str("access_token"), "")
		// Denying sends access_denied with the state.
		_, challenge = pkce()
		b := newBrowser(t, e)
		params := authParams("app", "patient/*.rs", challenge)
		params.Set("aud", e.base)
		pg := b.get(e.srv.URL + "/auth/authorize?" + params.Encode())
		pg = b.post(e.srv.URL+"/auth/login", url.Values{"csrf": {csrf(t, pg)}, "username": {"alice"}, "password": {password}})
		pg = b.post(e.srv.URL+"/auth/consent", url.Values{"csrf": {csrf(t, pg)}, "action": {"deny"}})
		if q := redirectParams(t, pg); q.Get("error") != "access_denied" || q.Get("state") != "st-app" {
			t.Errorf("deny: %v", q)
		}
	})
}

func TestAuthorizeRefusals(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		newAuthFixture(t, e)
		_, challenge := pkce()
		redirectErr := func(name string, mod func(url.Values), code string) {
			t.Run(name, func(t *testing.T) {
				v := authParams("app", "patient/*.rs", challenge)
				v.Set("aud", e.base)
				mod(v)
				p := newBrowser(t, e).get(e.srv.URL + "/auth/authorize?" + v.Encode())
				q := redirectParams(t, p)
				if q.Get("error") != code || q.Get("code") != "" || q.Get("state") != v.Get("state") {
					t.Fatalf("got %v, want error %s with the state", q, code)
				}
			})
		}
		redirectErr("PKCEMissing", func(v url.Values) { v.Del("code_challenge"); v.Del("code_challenge_method") }, "invalid_request")
		redirectErr("PKCEPlain", func(v url.Values) { v.Set("code_challenge_method", "plain") }, "invalid_request")
		redirectErr("PKCEBlank", func(v url.Values) { v.Set("code_challenge", "") }, "invalid_request")
		redirectErr("WrongAud", func(v url.Values) { v.Set("aud", "https://elsewhere/fhir") }, "invalid_request")
		redirectErr("ResponseType", func(v url.Values) { v.Set("response_type", "token") }, "unsupported_response_type")
		redirectErr("NoScope", func(v url.Values) { v.Set("scope", "") }, "invalid_scope")
		redirectErr("UnknownLaunch", func(v url.Values) { v.Set("launch", "nope") }, "invalid_request")
		pageErr := func(name string, mod func(url.Values), status int, msg string) {
			t.Run(name, func(t *testing.T) {
				v := authParams("app", "patient/*.rs", challenge)
				v.Set("aud", e.base)
				mod(v)
				p := newBrowser(t, e).get(e.srv.URL + "/auth/authorize?" + v.Encode())
				if p.location != "" || p.status != status || !strings.Contains(p.body, msg) {
					t.Fatalf("got %d %q %s, want a %d page saying %q", p.status, p.location, p.body, status, msg)
				}
			})
		}
		pageErr("RedirectMismatch", func(v url.Values) { v.Set("redirect_uri", "https://evil.example/cb") }, 400, "not one of its registered addresses")
		pageErr("UnknownClient", func(v url.Values) { v.Set("client_id", "nobody") }, 400, "not registered")
		t.Run("BackendClientCannotAuthorize", func(t *testing.T) {
			v := authParams("hie", "system/*.rs", challenge)
			v.Set("aud", e.base)
			v.Set("redirect_uri", "")
			p := newBrowser(t, e).get(e.srv.URL + "/auth/authorize?" + v.Encode())
			if p.status != 400 {
				t.Fatalf("backend client authorize: %d %s", p.status, p.location)
			}
		})
		t.Run("CSRF", func(t *testing.T) {
			b := newBrowser(t, e)
			v := authParams("app", "patient/*.rs", challenge)
			v.Set("aud", e.base)
			b.get(e.srv.URL + "/auth/authorize?" + v.Encode())
			p := b.post(e.srv.URL+"/auth/login", url.Values{"csrf": {"forged"}, "username": {"alice"}, "password": {password}})
			if p.status != 403 {
				t.Fatalf("login without the CSRF token: %d", p.status)
			}
		})
		t.Run("LoginRateLimit", func(t *testing.T) {
			b := newBrowser(t, e)
			v := authParams("app", "patient/*.rs", challenge)
			v.Set("aud", e.base)
			p := b.get(e.srv.URL + "/auth/authorize?" + v.Encode())
			tok := csrf(t, p)
			for i := 0; i < auth.MaxLoginFailures; i++ {
				if p := b.post(e.srv.URL+"/auth/login", url.Values{"csrf": {tok}, "username": {"doc"}, "password": {"wrong password"}}); p.status != 401 {
					t.Fatalf("wrong password %d: %d", i, p.status)
				}
			}
			p = b.post(e.srv.URL+"/auth/login", url.Values{"csrf": {tok}, "username": {"doc"}, "password": {password}})
			if p.status != 429 || !strings.Contains(p.body, "Too many failed sign-in attempts") {
				t.Fatalf("after %d failures the right password must be refused too: %d", auth.MaxLoginFailures, p.status)
			}
		})
	})
}

func TestCodeAndRefreshRules(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		f := newAuthFixture(t, e)
		code, verifier := f.codeFor(t, "app", "launch/patient offline_access patient/*.rs", "alice")
		wantOAuthError(t, f.tokenRequest(t, exchange(code, "wrong-verifier-wrong-verifier-wrong-verifier", "app"), "", ""), 400, "invalid_grant")
		// The failed attempt spent the code: codes are one-time.
		wantOAuthError(t, f.tokenRequest(t, exchange(code, verifier, "app"), "", ""), 400, "invalid_grant")
		code, _ = f.codeFor(t, "app", "launch/patient offline_access patient/*.rs", "alice")
		wantOAuthError(t, f.tokenRequest(t, exchange(code, "", "app"), "", ""), 400, "invalid_request")
		code, verifier = f.codeFor(t, "app", "launch/patient offline_access patient/*.rs", "alice")
		r := f.tokenRequest(t, exchange(code, verifier, "app"), "", "")
		if r.status != 200 {
			t.Fatalf("exchange: %v", r.body)
		}
		first := r.str("access_token")
		e.must(200, "GET", "/Patient/alice", first, "")
		// Reusing the code is refused and revokes what it issued.
		wantOAuthError(t, f.tokenRequest(t, exchange(code, verifier, "app"), "", ""), 400, "invalid_grant")
		e.must(401, "GET", "/Patient/alice", first, "")
		// Refresh: never wider, never by another client, never a made-up token; none of these spends the token.
		code, verifier = f.codeFor(t, "app", "launch/patient offline_access patient/*.rs", "alice")
		r = f.tokenRequest(t, exchange(code, verifier, "app"), "", "")
		rt1 := r.str("refresh_token")
		wantOAuthError(t, f.tokenRequest(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt1}, "client_id": {"app"}, "scope": {"patient/*.rs user/*.rs"}}, "", ""), 400, "invalid_scope")
		wantOAuthError(t, f.tokenRequest(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt1}, "client_id": {"narrow"}}, "", ""), 400, "invalid_grant")
		wantOAuthError(t, f.tokenRequest(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"random"}, "client_id": {"app"}}, "", ""), 400, "invalid_grant")
		// A narrower scope rotates the token. A public client need not name itself (SMART's refresh request has no
		// client_id, and fhirclient sends none).
		r2 := f.tokenRequest(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt1}, "scope": {"offline_access patient/*.rs"}}, "", "")
		if r2.status != 200 || r2.str("scope") != "offline_access patient/*.rs" || r2.str("refresh_token") == "" || r2.str("refresh_token") == rt1 {
			t.Fatalf("refresh: %v", r2.body)
		}
		newAccess := r2.str("access_token")
		e.must(200, "GET", "/Patient/alice", newAccess, "")
		// Reusing the old refresh token revokes the whole family, including the newest tokens.
		wantOAuthError(t, f.tokenRequest(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt1}, "client_id": {"app"}}, "", ""), 400, "invalid_grant")
		e.must(401, "GET", "/Patient/alice", newAccess, "")
		wantOAuthError(t, f.tokenRequest(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {r2.str("refresh_token")}, "client_id": {"app"}}, "", ""), 400, "invalid_grant")
		wantOAuthError(t, f.tokenRequest(t, url.Values{"grant_type": {"password"}}, "", ""), 400, "unsupported_grant_type")
		wantOAuthError(t, f.tokenRequest(t, url.Values{}, "", ""), 400, "invalid_request")
	})
}

func TestConfidentialClientAndPractitioner(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		f := newAuthFixture(t, e)
		code, verifier := f.codeFor(t, "conf", "launch/patient user/*.rs patient/*.rs openid fhirUser", "doc")
		form := exchange(code, verifier, "")
		form.Del("client_id")
		r := f.tokenRequest(t, form, "conf", "wrong-wrong-wrong")
		wantOAuthError(t, r, 401, "invalid_client")
		if r.header.Get("WWW-Authenticate") == "" {
			t.Errorf("401 invalid_client after Basic without WWW-Authenticate")
		}
		code, verifier = f.codeFor(t, "conf", "launch/patient user/*.rs patient/*.rs openid fhirUser", "doc")
		form = exchange(code, verifier, "")
		form.Del("client_id")
		r = f.tokenRequest(t, form, "conf", "s3cret-s3cret-s3cret")
		if r.status != 200 || r.str("patient") != "alice" || !strings.Contains(r.str("scope"), "user/*.rs") {
			t.Fatalf("practitioner via Basic: %v", r.body)
		}
		// A confidential client's refresh token needs the client's authentication; the token alone is not enough.
		code, verifier = f.codeFor(t, "conf", "user/Patient.rs offline_access", "doc")
		form = exchange(code, verifier, "")
		form.Del("client_id")
		rt := f.tokenRequest(t, form, "conf", "s3cret-s3cret-s3cret").str("refresh_token")
		if rt == "" {
			t.Fatal("no refresh token for offline_access")
		}
		wantOAuthError(t, f.tokenRequest(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, "", ""), 401, "invalid_client")
		if r := f.tokenRequest(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, "conf", "s3cret-s3cret-s3cret"); r.status != 200 {
			t.Fatalf("confidential refresh with Basic (the unauthenticated try must not have spent it): %v", r.body)
		}
		// client_secret_post works too; a public client id without the secret does not.
		code, verifier = f.codeFor(t, "conf", "user/Patient.rs", "doc")
		form = exchange(code, verifier, "conf")
		wantOAuthError(t, f.tokenRequest(t, form, "", ""), 401, "invalid_client")
		code, verifier = f.codeFor(t, "conf", "user/Patient.rs", "doc")
		form = exchange(code, verifier, "conf")
		form.Set("client_secret", "s3cret-s3cret-s3cret")
		if r := f.tokenRequest(t, form, "", ""); r.status != 200 || r.str("scope") != "user/Patient.rs" {
			t.Fatalf("client_secret_post: %v", r.body)
		}
		// A patient asking for user/ scopes does not get them; a client registered narrowly grants only that.
		code, verifier = f.codeFor(t, "narrow", "launch/patient patient/*.rs patient/Patient.rs user/*.rs openid fhirUser", "alice")
		if r := f.tokenRequest(t, exchange(code, verifier, "narrow"), "", ""); r.str("scope") != "launch/patient patient/Patient.rs openid fhirUser" {
			t.Fatalf("narrow client granted %q", r.str("scope"))
		}
		// EHR launch: the context comes from the launch.
		l := &store.Launch{ID: "L1", ClientID: "app", Patient: "alice", FHIRUser: "Practitioner/doc", Expires: time.Now().Add(time.Minute).Unix()}
		if err := e.store.PutLaunch(context.Background(), l); err != nil {
			t.Fatal(err)
		}
		verifier, challenge := pkce()
		params := authParams("app", "launch patient/*.rs", challenge)
		params.Set("launch", "L1")
		p := f.signIn(t, newBrowser(t, e), params, "doc", nil)
		r = f.tokenRequest(t, exchange(redirectParams(t, p).Get("code"), verifier, "app"), "", "")
		if r.str("patient") != "alice" || r.body["need_patient_banner"] != true {
			t.Fatalf("EHR launch: %v", r.body)
		}
		other := &store.Launch{ID: "L2", ClientID: "conf", Patient: "alice", Expires: time.Now().Add(time.Minute).Unix()}
		e.store.PutLaunch(context.Background(), other)
		params.Set("launch", "L2")
		if q := redirectParams(t, f.signIn(t, newBrowser(t, e), params, "doc", nil)); q.Get("error") != "invalid_request" {
			t.Fatalf("another app's launch: %v", q)
		}
	})
}

func (f *authFixture) assertion(t *testing.T, mod func(m jwt.MapClaims, h map[string]any) (jwt.SigningMethod, any)) string {
	t.Helper()
	now := time.Now()
	m := jwt.MapClaims{"iss": "hie", "sub": "hie", "aud": f.srv.URL + "/auth/token", "exp": now.Add(4 * time.Minute).Unix(),
		"iat": now.Unix(), "jti": fmt.Sprint(now.UnixNano())}
	h := map[string]any{"kid": "rsa1"}
	var method jwt.SigningMethod = jwt.SigningMethodRS384
	var key any = f.rsaKey
	if mod != nil {
		method, key = mod(m, h)
	}
	tk := jwt.NewWithClaims(method, m)
	for k, v := range h {
		tk.Header[k] = v
	}
	s, err := tk.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func backendForm(assertion, scope string) url.Values {
	return url.Values{"grant_type": {"client_credentials"}, "scope": {scope},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}
}

func TestBackendServices(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		f := newAuthFixture(t, e)
		r := f.tokenRequest(t, backendForm(f.assertion(t, nil), "system/Patient.rs"), "", "")
		if r.status != 200 || r.body["expires_in"].(float64) > 300 || r.str("refresh_token") != "" || r.str("scope") != "system/Patient.rs" {
			t.Fatalf("RS384 assertion: %v", r.body)
		}
		e.must(200, "GET", "/Patient/alice", r.str("access_token"), "")
		e.must(403, "GET", "/Practitioner/doc", r.str("access_token"), "")
		// Ending the client's grants (carta clients remove) revokes its live access token at once.
		live := f.tokenRequest(t, backendForm(f.assertion(t, nil), "system/Patient.rs"), "", "").str("access_token")
		if n, err := e.auth.EndGrants(context.Background(), "", "hie"); err != nil || n != 1 {
			t.Fatalf("EndGrants for the backend client: %d %v", n, err)
		}
		e.must(401, "GET", "/Patient/alice", live, "")
		e.must(401, "GET", "/Patient/alice", r.str("access_token"), "")
		ec := f.assertion(t, func(m jwt.MapClaims, h map[string]any) (jwt.SigningMethod, any) {
			h["kid"] = "ec1"
			return jwt.SigningMethodES384, f.ecKey
		})
		if r := f.tokenRequest(t, backendForm(ec, "system/Observation.rs"), "", ""); r.status != 200 {
			t.Fatalf("ES384 assertion: %v", r.body)
		}
		other, _ := rsa.GenerateKey(rand.Reader, 2048)
		pubDER, _ := x509.MarshalPKIXPublicKey(&f.rsaKey.PublicKey)
		pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
		replayed := f.assertion(t, nil)
		f.tokenRequest(t, backendForm(replayed, "system/Patient.rs"), "", "")
		bad := map[string]string{
			"BadSignature": f.assertion(t, func(jwt.MapClaims, map[string]any) (jwt.SigningMethod, any) { return jwt.SigningMethodRS384, other }),
			"WrongAud": f.assertion(t, func(m jwt.MapClaims, _ map[string]any) (jwt.SigningMethod, any) {
				m["aud"] = e.base
				return jwt.SigningMethodRS384, f.rsaKey
			}),
			"Expired": f.assertion(t, func(m jwt.MapClaims, _ map[string]any) (jwt.SigningMethod, any) {
				m["exp"] = time.Now().Add(-time.Minute).Unix()
				return jwt.SigningMethodRS384, f.rsaKey
			}),
			"FarFuture": f.assertion(t, func(m jwt.MapClaims, _ map[string]any) (jwt.SigningMethod, any) {
				m["exp"] = time.Now().Add(time.Hour).Unix()
				return jwt.SigningMethodRS384, f.rsaKey
			}),
			"Replayed": replayed,
			"UnknownKid": f.assertion(t, func(_ jwt.MapClaims, h map[string]any) (jwt.SigningMethod, any) {
				h["kid"] = "nope"
				return jwt.SigningMethodRS384, f.rsaKey
			}),
			"AlgNone": f.assertion(t, func(jwt.MapClaims, map[string]any) (jwt.SigningMethod, any) {
				return jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType
			}),
			"HS256WithPublicKey": f.assertion(t, func(jwt.MapClaims, map[string]any) (jwt.SigningMethod, any) {
				return jwt.SigningMethodHS256, pubPEM
			}),
			"IssNotSub": f.assertion(t, func(m jwt.MapClaims, _ map[string]any) (jwt.SigningMethod, any) {
				m["sub"] = "someone"
				return jwt.SigningMethodRS384, f.rsaKey
			}),
		}
		for name, a := range bad {
			t.Run(name, func(t *testing.T) {
				wantOAuthError(t, f.tokenRequest(t, backendForm(a, "system/Patient.rs"), "", ""), 401, "invalid_client")
			})
		}
		t.Run("WrongAssertionType", func(t *testing.T) {
			form := backendForm(f.assertion(t, nil), "system/Patient.rs")
			form.Set("client_assertion_type", "urn:other")
			wantOAuthError(t, f.tokenRequest(t, form, "", ""), 401, "invalid_client")
		})
		t.Run("ScopeBeyondRegistration", func(t *testing.T) {
			wantOAuthError(t, f.tokenRequest(t, backendForm(f.assertion(t, nil), "system/Practitioner.rs"), "", ""), 400, "invalid_scope")
			wantOAuthError(t, f.tokenRequest(t, backendForm(f.assertion(t, nil), "user/Patient.rs"), "", ""), 400, "invalid_scope")
		})
	})
}

func TestIntrospectAndRevoke(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		f := newAuthFixture(t, e)
		code, verifier := f.codeFor(t, "app", "launch/patient offline_access patient/*.rs", "alice")
		r := f.tokenRequest(t, exchange(code, verifier, "app"), "", "")
		at, rt := r.str("access_token"), r.str("refresh_token")
		intro := func(token, caller string, form url.Values) (int, map[string]any) {
			form.Set("token", token)
			req, _ := http.NewRequest("POST", e.srv.URL+"/auth/introspect", strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if caller != "" {
				req.Header.Set("Authorization", "Bearer "+caller)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var out map[string]any
			json.NewDecoder(res.Body).Decode(&out)
			return res.StatusCode, out
		}
		if s, out := intro(at, "", url.Values{"client_id": {"app"}}); s != 200 || out["active"] != true || out["patient"] != "alice" || out["scope"] != "launch/patient offline_access patient/*.rs" {
			t.Fatalf("introspect active: %d %v", s, out)
		}
		if s, out := intro(rt, at, url.Values{}); s != 200 || out["active"] != true {
			t.Fatalf("introspect a refresh token with a bearer caller: %d %v", s, out)
		}
		if s, out := intro("garbage", "", url.Values{"client_id": {"app"}}); s != 200 || len(out) != 1 || out["active"] != false {
			t.Fatalf("introspect garbage: %d %v", s, out)
		}
		if s, _ := intro(at, "", url.Values{}); s != 401 {
			t.Fatalf("unauthenticated introspection: %d", s)
		}
		revoke := func(token string) int {
			req, _ := http.NewRequest("POST", e.srv.URL+"/auth/revoke", strings.NewReader(url.Values{"token": {token}, "client_id": {"app"}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			return res.StatusCode
		}
		if s := revoke(at); s != 200 {
			t.Fatalf("revoke: %d", s)
		}
		e.must(401, "GET", "/Patient/alice", at, "")
		if _, out := intro(at, "", url.Values{"client_id": {"app"}}); out["active"] != false {
			t.Errorf("revoked token introspects active")
		}
		if s := revoke(rt); s != 200 {
			t.Fatalf("revoke refresh: %d", s)
		}
		wantOAuthError(t, f.tokenRequest(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {"app"}}, "", ""), 400, "invalid_grant")
		if s := revoke("unknown-token"); s != 200 {
			t.Errorf("revoking an unknown token must answer 200, got %d", s)
		}
	})
}
