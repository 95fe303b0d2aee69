package conformance

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// fakeServer is a small FHIR patient-access server that behaves correctly for everything the suite asks, except
// for the defects switched on. It shows that the suite is not tuned to Carta: with no defect it passes; with each
// defect exactly the tests for it fail.
type fakeServer struct {
	leak        bool // an unfiltered DocumentReference search returns every patient's documents
	noETag      bool // reads carry no ETag
	anonymous   bool // a request without a token is answered 200 instead of 401
	collection  bool // searches answer with a Bundle of type collection instead of searchset
	relativeURL bool // the SMART configuration has a relative endpoint URL
	acceptNone  bool // the token endpoint accepts an unsigned (alg none) client assertion
	base        string

	plainPKCE bool // the authorization endpoint accepts code_challenge_method=plain

	backendKey *rsa.PublicKey
	mu         sync.Mutex
	seenJTI    map[string]bool
	issued     map[string]string // access tokens issued by launches → patient
	pending    map[string]url.Values
	codes      map[string]*fakeCode
	refresh    map[string]string // refresh token → granted scope
	serial     int
}

type fakeCode struct {
	params url.Values
	used   bool
}

const (
	fakeApp      = "fake-app"
	fakeRedirect = "http://127.0.0.1:9/cb"
	fakeScope    = "launch/patient offline_access patient/*.rs"
)

// tokenPatient is the patient a token is for (known false for an unknown or revoked token).
func (f *fakeServer) tokenPatient(tok string) (string, bool) {
	if p, ok := fakeTokens[tok]; ok {
		return p, true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.issued[tok]
	return p, ok
}

func (f *fakeServer) next() string {
	f.serial++
	return strconv.Itoa(f.serial)
}

// authorize checks an authorization request and shows the sign-in form.
func (f *fakeServer) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != fakeApp || q.Get("redirect_uri") != fakeRedirect {
		http.Error(w, "unknown client or redirect URI", 400)
		return
	}
	method := q.Get("code_challenge_method")
	if q.Get("response_type") != "code" || q.Get("aud") != f.base || q.Get("code_challenge") == "" || !(method == "S256" || f.plainPKCE && method == "plain") {
		http.Redirect(w, r, fakeRedirect+"?error=invalid_request&state="+url.QueryEscape(q.Get("state")), http.StatusFound)
		return
	}
	f.mu.Lock()
	id := f.next()
	if f.pending == nil {
		f.pending = map[string]url.Values{}
	}
	f.pending[id] = q
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/html")
	io.WriteString(w, `<html><body><form method="post" action="login"><input type="hidden" name="req" value="`+id+`">
		<input type="text" name="username"><input type="password" name="password"><button type="submit">Sign in</button></form></body></html>`)
}

func (f *fakeServer) login(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	f.mu.Lock()
	q, ok := f.pending[r.PostForm.Get("req")]
	delete(f.pending, r.PostForm.Get("req"))
	code := "code-" + f.next()
	if ok && r.PostForm.Get("username") == "ann" && r.PostForm.Get("password") == "pw" {
		if f.codes == nil {
			f.codes = map[string]*fakeCode{}
		}
		f.codes[code] = &fakeCode{params: q}
	}
	f.mu.Unlock()
	if !ok || r.PostForm.Get("password") != "pw" {
		http.Error(w, "sign-in failed", 400)
		return
	}
	http.Redirect(w, r, fakeRedirect+"?code="+code+"&state="+url.QueryEscape(q.Get("state")), http.StatusFound)
}

// grant answers the authorization_code and refresh_token grants of the fake app.
func (f *fakeServer) grant(w http.ResponseWriter, form url.Values) {
	f.mu.Lock()
	defer f.mu.Unlock()
	scope := ""
	switch form.Get("grant_type") {
	case "authorization_code":
		c := f.codes[form.Get("code")]
		if c == nil || c.used || form.Get("client_id") != fakeApp || form.Get("redirect_uri") != fakeRedirect {
			f.oauth(w, 400, "invalid_grant")
			return
		}
		c.used = true
		v := form.Get("code_verifier")
		sum := sha256.Sum256([]byte(v))
		ok := v != "" && (c.params.Get("code_challenge_method") == "S256" && base64.RawURLEncoding.EncodeToString(sum[:]) == c.params.Get("code_challenge") ||
			c.params.Get("code_challenge_method") == "plain" && v == c.params.Get("code_challenge"))
		if !ok {
			f.oauth(w, 400, "invalid_grant")
			return
		}
		scope = fakeScope
	case "refresh_token":
		granted, ok := f.refresh[form.Get("refresh_token")]
		if !ok {
			f.oauth(w, 400, "invalid_grant")
			return
		}
		scope = granted
		if asked := form.Get("scope"); asked != "" {
			for s := range strings.FieldsSeq(asked) {
				if !strings.Contains(" "+granted+" ", " "+s+" ") {
					f.oauth(w, 400, "invalid_scope")
					return
				}
			}
			scope = asked
		}
		delete(f.refresh, form.Get("refresh_token"))
	}
	at, rt := "tok-launch-"+f.next(), "rt-"+f.next()
	if f.issued == nil {
		f.issued, f.refresh = map[string]string{}, map[string]string{}
	}
	f.issued[at] = "a"
	f.refresh[rt] = fakeScope
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(map[string]any{"access_token": at, "token_type": "bearer", "expires_in": 3600, "scope": scope, "patient": "a", "refresh_token": rt})
}

func (f *fakeServer) revoke(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	f.mu.Lock()
	delete(f.issued, r.PostForm.Get("token"))
	delete(f.refresh, r.PostForm.Get("token"))
	f.mu.Unlock()
	w.WriteHeader(200)
}

// backendToken is client_credentials with a private_key_jwt assertion, checked as SMART asks (or, with the
// acceptNone defect, not checked when unsigned).
func (f *fakeServer) backendToken(w http.ResponseWriter, form url.Values) {
	if form.Get("client_assertion_type") != assertionType {
		f.oauth(w, 400, "invalid_request")
		return
	}
	a := form.Get("client_assertion")
	var claims jwt.MapClaims
	if hdr, _, err := jwt.NewParser().ParseUnverified(a, jwt.MapClaims{}); f.acceptNone && err == nil && hdr.Header["alg"] == "none" {
		claims = hdr.Claims.(jwt.MapClaims)
	} else {
		tok, err := jwt.Parse(a, func(t *jwt.Token) (any, error) {
			if t.Header["kid"] != "fake-1" {
				return nil, errors.New("unknown kid")
			}
			return f.backendKey, nil
		}, jwt.WithValidMethods([]string{"RS384"}), jwt.WithAudience(f.base+"/token"), jwt.WithExpirationRequired())
		if err != nil {
			f.oauth(w, 401, "invalid_client")
			return
		}
		claims = tok.Claims.(jwt.MapClaims)
	}
	exp, _ := claims.GetExpirationTime()
	jti, _ := claims["jti"].(string)
	f.mu.Lock()
	replay := f.seenJTI[jti]
	if f.seenJTI == nil {
		f.seenJTI = map[string]bool{}
	}
	f.seenJTI[jti] = true
	f.mu.Unlock()
	if claims["iss"] != "fake-backend" || claims["sub"] != "fake-backend" || exp == nil || time.Until(exp.Time) > 5*time.Minute || jti == "" || replay {
		f.oauth(w, 401, "invalid_client")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"access_token": "tok-sys", "token_type": "bearer", "expires_in": 300, "scope": "system/Patient.rs"})
}

var fakeTokens = map[string]string{"tok-a": "a", "tok-b": "b", "tok-sys": ""}

var fakePatients = map[string]map[string]any{
	"a": {"resourceType": "Patient", "id": "a", "meta": map[string]any{"versionId": "1"}, "identifier": []any{map[string]any{"system": "urn:mrn", "value": "A-1"}},
		"name": []any{map[string]any{"family": "Adams", "given": []any{"Ann"}}}, "gender": "female", "birthDate": "1980-02-03"},
	"b": {"resourceType": "Patient", "id": "b", "meta": map[string]any{"versionId": "1"}, "identifier": []any{map[string]any{"system": "urn:mrn", "value": "B-1"}},
		"name": []any{map[string]any{"family": "Baker", "given": []any{"Bob"}}}, "gender": "male", "birthDate": "1975-05-06"},
}

func fakeDoc(id, patient, date, bin string) map[string]any {
	att := map[string]any{"contentType": "text/plain", "data": "aGVsbG8="}
	if bin != "" {
		att = map[string]any{"contentType": "text/plain", "url": bin}
	}
	return map[string]any{"resourceType": "DocumentReference", "id": id, "status": "current", "subject": map[string]any{"reference": "Patient/" + patient},
		"date": date, "type": map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": "11506-3"}}},
		"category": []any{map[string]any{"coding": []any{map[string]any{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category", "code": "clinical-note"}}}},
		"content":  []any{map[string]any{"attachment": att}}}
}

var fakeDocs = []map[string]any{
	fakeDoc("a1", "a", "2024-01-10T10:00:00Z", ""), fakeDoc("a2", "a", "2024-02-10T10:00:00Z", ""), fakeDoc("b1", "b", "2024-01-10T10:00:00Z", "Binary/bin-b"),
}

func (f *fakeServer) write(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/fhir+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (f *fakeServer) outcome(w http.ResponseWriter, status int, msg string) {
	f.write(w, status, map[string]any{"resourceType": "OperationOutcome", "issue": []any{map[string]any{"severity": "error", "code": "processing", "diagnostics": msg}}})
}

func (f *fakeServer) oauth(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": code})
}

func (f *fakeServer) bundle(w http.ResponseWriter, r *http.Request, path string, all []map[string]any, q url.Values) {
	count, _ := strconv.Atoi(q.Get("_count"))
	if count <= 0 {
		count = 50
	}
	off, _ := strconv.Atoi(q.Get("_offset"))
	page := all[min(off, len(all)):min(off+count, len(all))]
	typ := "searchset"
	if f.collection {
		typ = "collection"
	}
	self := url.Values{}
	for k, v := range q {
		self[k] = v
	}
	links := []any{map[string]any{"relation": "self", "url": f.base + "/" + path + "?" + self.Encode()}}
	if off+count < len(all) {
		self.Set("_offset", strconv.Itoa(off+count))
		links = append(links, map[string]any{"relation": "next", "url": f.base + "/" + path + "?" + self.Encode()})
	}
	var entries []any
	for _, res := range page {
		entries = append(entries, map[string]any{"fullUrl": f.base + "/" + res["resourceType"].(string) + "/" + res["id"].(string), "resource": res, "search": map[string]any{"mode": "match"}})
	}
	f.write(w, 200, map[string]any{"resourceType": "Bundle", "type": typ, "total": len(all), "link": links, "entry": entries})
}

func (f *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/fhir/")
	if r.URL.Path == "/fhir" {
		path = ""
	}
	if path == "metadata" || path == ".well-known/smart-configuration" {
		w.Header().Set("Access-Control-Allow-Origin", "*")
	}
	switch path {
	case "metadata":
		f.write(w, 200, map[string]any{"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1", "format": []any{"json"},
			"rest": []any{map[string]any{"mode": "server", "resource": []any{
				map[string]any{"type": "Patient", "interaction": []any{map[string]any{"code": "read"}, map[string]any{"code": "vread"}, map[string]any{"code": "search-type"}}},
				map[string]any{"type": "DocumentReference", "interaction": []any{map[string]any{"code": "read"}, map[string]any{"code": "search-type"}}},
			}}}})
		return
	case ".well-known/smart-configuration":
		revoke := f.base + "/revoke"
		if f.relativeURL {
			revoke = "/fhir/revoke"
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"token_endpoint": f.base + "/token", "authorization_endpoint": f.base + "/authorize",
			"introspection_endpoint": f.base + "/introspect", "revocation_endpoint": revoke, "grant_types_supported": []any{"authorization_code", "refresh_token", "client_credentials"},
			"token_endpoint_auth_methods_supported": []any{"none", "private_key_jwt"}, "token_endpoint_auth_signing_alg_values_supported": []any{"RS384"},
			"capabilities": []any{"launch-standalone", "client-public", "client-confidential-asymmetric", "context-standalone-patient", "permission-patient"}, "code_challenge_methods_supported": []any{"S256"},
			"scopes_supported": []any{"patient/*.rs"}, "response_types_supported": []any{"code"}})
		return
	case "authorize":
		f.authorize(w, r)
		return
	case "login":
		f.login(w, r)
		return
	case "revoke":
		f.revoke(w, r)
		return
	case "token":
		r.ParseForm()
		switch {
		case r.PostForm.Get("grant_type") == "client_credentials" && r.PostForm.Get("client_assertion") != "":
			f.backendToken(w, r.PostForm)
		case r.Header.Get("Authorization") != "":
			f.oauth(w, 401, "invalid_client")
		case r.PostForm.Get("grant_type") == "authorization_code" || r.PostForm.Get("grant_type") == "refresh_token":
			f.grant(w, r.PostForm)
		default:
			f.oauth(w, 400, "unsupported_grant_type")
		}
		return
	}
	tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	patient, known := f.tokenPatient(tok)
	if !known {
		if tok == "" && f.anonymous {
			patient = "a"
		} else {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fhir"`)
			f.outcome(w, 401, "a valid bearer token is needed")
			return
		}
	}
	if path == "introspect" {
		r.ParseForm()
		p, ok := f.tokenPatient(r.PostForm.Get("token"))
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			json.NewEncoder(w).Encode(map[string]any{"active": false})
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"active": true, "scope": "patient/*.rs", "patient": p})
		return
	}
	if strings.Contains(r.Header.Get("Accept"), "xml") {
		f.outcome(w, 406, "JSON only")
		return
	}
	q := r.URL.Query()
	if r.Method == http.MethodPost {
		if !strings.HasSuffix(path, "/_search") {
			f.outcome(w, 405, "this server is read-only")
			return
		}
		if r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
			f.outcome(w, 415, "a search body is form-encoded")
			return
		}
		b, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(b))
		for k, v := range form {
			q[k] = v
		}
		path = strings.TrimSuffix(path, "/_search")
	} else if r.Method != http.MethodGet {
		f.outcome(w, 405, "this server is read-only")
		return
	}
	allowed := func(p string) bool { return patient == "" || p == patient }
	parts := strings.Split(path, "/")
	switch {
	case len(parts) == 1 && parts[0] == "Patient":
		if bd := q.Get("birthdate"); bd != "" && (len(bd) < 4 || bd[0] < '0' || bd[0] > '9') {
			f.outcome(w, 400, "birthdate: not a date")
			return
		}
		var out []map[string]any
		keys := []string{"a", "b"}
		for _, k := range keys {
			p := fakePatients[k]
			if !allowed(k) || (q.Get("_id") != "" && q.Get("_id") != k) || (q.Get("gender") != "" && q.Get("gender") != p["gender"]) ||
				(q.Get("birthdate") != "" && q.Get("birthdate") != p["birthDate"]) ||
				(q.Get("name") != "" && !nameMatches(p, q.Get("name"))) ||
				(q.Get("identifier") != "" && !strings.HasSuffix(q.Get("identifier"), "|"+str(p, "identifier", 0, "value"))) {
				continue
			}
			out = append(out, p)
		}
		f.bundle(w, r, "Patient", out, q)
	case len(parts) == 2 && parts[0] == "Patient":
		p, ok := fakePatients[parts[1]]
		if !ok || !allowed(parts[1]) {
			f.outcome(w, 404, "no such Patient")
			return
		}
		if !f.noETag {
			w.Header().Set("ETag", `W/"1"`)
		}
		w.Header().Set("Last-Modified", "Mon, 02 Mar 2026 10:00:00 GMT")
		f.write(w, 200, p)
	case len(parts) == 4 && parts[0] == "Patient" && parts[2] == "_history" && parts[3] == "1" && fakePatients[parts[1]] != nil && allowed(parts[1]):
		f.write(w, 200, fakePatients[parts[1]])
	case len(parts) == 1 && parts[0] == "DocumentReference":
		want := strings.TrimPrefix(q.Get("patient"), "Patient/")
		if want == "" {
			want = strings.TrimPrefix(q.Get("subject"), "Patient/")
		}
		if want == "" {
			want = q.Get("subject:Patient._id")
		}
		if name := q.Get("subject:Patient.name"); name != "" {
			want = "nobody"
			for k, p := range fakePatients {
				if nameMatches(p, name) {
					want = k
				}
			}
		}
		var out []map[string]any
		for _, d := range fakeDocs {
			p := strings.TrimPrefix(str(d, "subject", "reference"), "Patient/")
			if (!allowed(p) && !(f.leak && want == "" && q.Get("_id") == "")) || (want != "" && p != want) || (q.Get("_id") != "" && q.Get("_id") != d["id"]) ||
				(q.Get("category") != "" && !contains(codings(d["category"]), q.Get("category"))) || (q.Get("type") != "" && !contains(codings(d["type"]), q.Get("type"))) ||
				(strings.HasPrefix(q.Get("date"), "ge") && str(d, "date") < q.Get("date")[2:]) {
				continue
			}
			out = append(out, d)
		}
		sort.Slice(out, func(i, j int) bool { return out[i]["id"].(string) < out[j]["id"].(string) })
		f.bundle(w, r, "DocumentReference", out, q)
	case len(parts) == 2 && parts[0] == "DocumentReference":
		for _, d := range fakeDocs {
			if d["id"] == parts[1] && allowed(strings.TrimPrefix(str(d, "subject", "reference"), "Patient/")) {
				f.write(w, 200, d)
				return
			}
		}
		f.outcome(w, 404, "no such DocumentReference")
	case len(parts) == 1 && parts[0] == "Observation":
		f.bundle(w, r, "Observation", nil, q)
	default:
		f.outcome(w, 404, "not supported here: "+path)
	}
}

func runFake(t *testing.T, f *fakeServer) map[string]Result {
	t.Helper()
	ts := httptest.NewServer(f)
	t.Cleanup(ts.Close)
	f.base = ts.URL + "/fhir"
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	f.backendKey = &key.PublicKey
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	cfg := &Config{Base: f.base, PatientA: Identity{ID: "a", Token: "tok-a"}, PatientB: Identity{ID: "b", Token: "tok-b"}, System: Identity{Token: "tok-sys"},
		Backend: &BackendClient{ClientID: "fake-backend", PrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), KeyID: "fake-1"},
		Launch:  &LaunchClient{ClientID: fakeApp, RedirectURI: fakeRedirect, Scope: fakeScope, Username: "ann", Password: "pw"}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rep := (&Runner{Config: cfg}).Run(context.Background(), Default(), nil)
	out := map[string]Result{}
	for _, g := range rep.Groups {
		for _, r := range g.Results {
			out[r.ID] = r
		}
	}
	// The reports are well-formed whatever the outcome.
	var js strings.Builder
	if err := rep.WriteJSON(&js); err != nil || !json.Valid([]byte(js.String())) {
		t.Errorf("the JSON report is not valid JSON: %v", err)
	}
	var ju strings.Builder
	if err := rep.WriteJUnit(&ju); err != nil {
		t.Fatal(err)
	}
	var parsed junitSuites
	if err := xml.Unmarshal([]byte(ju.String()), &parsed); err != nil || parsed.Tests != len(out) {
		t.Errorf("the JUnit report does not parse back (%v) or counts %d tests of %d", err, parsed.Tests, len(out))
	}
	return out
}

func failing(results map[string]Result) []string {
	var out []string
	for id, r := range results {
		if r.Status == Fail || r.Status == Error {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// TestFaultyServer: a fair server passes; with seeded defects, exactly the tests for them fail, naming their
// requirements.
func TestFaultyServer(t *testing.T) {
	clean := runFake(t, &fakeServer{})
	if f := failing(clean); len(f) > 0 {
		for _, id := range f {
			t.Errorf("%s fails against a server without defects: %v", id, clean[id].Messages)
		}
	}
	passed := 0
	for _, r := range clean {
		if r.Status == Pass {
			passed++
		}
	}
	if passed < 40 {
		t.Errorf("only %d tests pass against the fair server: the fake does not exercise the suite", passed)
	}

	defects := map[string]struct {
		server      *fakeServer
		fail        []string
		requirement string
	}{
		"leaks another patient's documents": {&fakeServer{leak: true}, []string{"isolation-search-unfiltered"}, "164.502(b)"},
		"no ETag":                           {&fakeServer{noETag: true}, []string{"rest-read-etag"}, "http.html#read"},
		"200 instead of 401":                {&fakeServer{anonymous: true}, []string{"auth-no-token"}, "RFC 6750"},
		"wrong Bundle type":                 {&fakeServer{collection: true}, []string{"rest-search-post", "rest-searchset"}, "http.html#search"},
		"relative discovery URL":            {&fakeServer{relativeURL: true}, []string{"discovery-absolute-urls"}, "conformance.html#using-well-known"},
		"unsigned client assertions":        {&fakeServer{acceptNone: true}, []string{"backend-alg-none"}, "client-confidential-asymmetric.html"},
		"PKCE plain accepted":               {&fakeServer{plainPKCE: true}, []string{"launch-pkce-plain"}, "app-launch.html"},
	}
	for name, d := range defects {
		t.Run(name, func(t *testing.T) {
			res := runFake(t, d.server)
			got := failing(res)
			if strings.Join(got, " ") != strings.Join(d.fail, " ") {
				t.Fatalf("failing tests %v, want exactly %v", got, d.fail)
			}
			for _, id := range got {
				if !strings.Contains(res[id].Requirement, d.requirement) || len(res[id].Messages) == 0 || len(res[id].Exchanges) == 0 {
					t.Errorf("%s: requirement %q (want one citing %s), messages %v, %d exchanges", id, res[id].Requirement, d.requirement, res[id].Messages, len(res[id].Exchanges))
				}
			}
		})
	}
}

// TestDocumented: docs/conformance.md lists every test.
func TestDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "conformance.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range Default().Groups {
		for _, tc := range g.Tests {
			if !strings.Contains(string(doc), "`"+tc.ID+"`") {
				t.Errorf("docs/conformance.md does not list %s", tc.ID)
			}
		}
	}
}

// TestSecretsRedacted: reports never carry tokens, passwords or secrets.
func TestSecretsRedacted(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"access_token":"SECRET-AT","refresh_token":"SECRET-RT","id_token":"SECRET-ID","token_type":"bearer"}`)
	}))
	defer ts.Close()
	r := &Runner{Config: &Config{Base: ts.URL}, Client: ts.Client()}
	tt := &T{ctx: context.Background(), r: r}
	tt.Do(http.MethodPost, ts.URL+"/token", Req{Token: "SECRET-BEARER", Form: url.Values{"client_secret": {"SECRET-CS"}, "password": {"SECRET-PW"}, "refresh_token": {"SECRET-RT2"}}})
	var b strings.Builder
	(&Report{Groups: []GroupResult{{Results: []Result{{Exchanges: tt.exchanges}}}}}).WriteJSON(&b)
	if strings.Contains(b.String(), "SECRET") {
		t.Errorf("the report shows a secret: %s", b.String())
	}
	// A link to another origin is followed without the token.
	var got string
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r.Header.Get("Authorization") }))
	defer other.Close()
	tt.Get(other.URL+"/fhir/Patient?page=2", "SECRET-BEARER")
	if got != "" {
		t.Errorf("the token was sent to another origin: %q", got)
	}
}

// TestSuiteShape: every test has a unique stable id, a title, a description and a cited requirement.
func TestSuiteShape(t *testing.T) {
	seen := map[string]bool{}
	for _, g := range Default().Groups {
		if g.ID == "" || g.Title == "" || g.Description == "" || len(g.Tests) == 0 {
			t.Errorf("group %q lacks an id, title, description or tests", g.ID)
		}
		for _, tc := range g.Tests {
			if seen[tc.ID] || !strings.HasPrefix(tc.ID, g.ID+"-") {
				t.Errorf("test id %q is repeated or not under its group %q", tc.ID, g.ID)
			}
			seen[tc.ID] = true
			if tc.Title == "" || tc.Description == "" || tc.Requirement == "" || tc.Run == nil {
				t.Errorf("%s lacks a title, description, requirement or body", tc.ID)
			}
		}
	}
}

func TestWithinScopes(t *testing.T) {
	for _, c := range []struct {
		granted, asked string
		want           bool
	}{
		{"patient/*.rs", "launch/patient patient/*.rs", true},
		{"patient/Observation.rs", "patient/*.rs", true},
		{"patient/Observation.r", "patient/*.read", true},
		{"patient/*.cruds", "patient/*.rs", false},
		{"user/*.rs", "patient/*.rs", false},
		{"offline_access", "openid offline_access", true},
		{"system/*.rs", "openid", false},
	} {
		if got := withinScopes(c.granted, c.asked); got != c.want {
			t.Errorf("withinScopes(%q, %q) = %v", c.granted, c.asked, got)
		}
	}
}
