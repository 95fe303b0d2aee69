package conformance

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
)

const (
	rfc6749Err = "RFC 6749 section 5.2"
	rfc6750    = "RFC 6750 section 3"
	rfc7662    = "RFC 7662 section 2.2"
)

// anyToken is a token the run has, for requests that only need to be authenticated.
func (t *T) anyToken() string {
	c := t.Config()
	for _, tok := range []string{c.System.Token, c.Practitioner.Token, c.PatientA.Token} {
		if tok != "" {
			return tok
		}
	}
	return ""
}

// patientA returns patient A's id and token, skipping the test when either is missing.
func (t *T) patientA() (string, string) {
	a := t.Config().PatientA
	if a.ID == "" || a.Token == "" {
		t.Skipf("needs patientA (id and token)")
	}
	return a.ID, a.Token
}

// tokenEndpoint is the SMART token endpoint (the test is omitted without one).
func (t *T) tokenEndpoint() string {
	te := t.endpoint("token_endpoint")
	if te == "" {
		t.Omitf("the SMART configuration names no token_endpoint")
	}
	return te
}

// oauthError checks an RFC 6749 §5.2 error response: one of the statuses, JSON with an error code among want.
func (t *T) oauthError(r *Resp, statuses []int, want ...string) {
	okStatus := false
	for _, s := range statuses {
		okStatus = okStatus || r.Status == s
	}
	t.Check(okStatus, "status %d, want one of %v", r.Status, statuses)
	t.Check(strings.HasPrefix(r.Header.Get("Content-Type"), "application/json"), "Content-Type %q, want application/json", r.Header.Get("Content-Type"))
	code := str(r.JSON(), "error")
	t.Check(contains(want, code), "error %q, want one of %v", code, want)
}

// tamper changes a JWT: its signature (sig) or its header to alg none without a signature (none).
func tamper(tok, how string) string {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return tok + "x"
	}
	switch how {
	case "sig":
		sig := []byte(parts[2])
		if len(sig) > 4 {
			i := len(sig) / 2
			if sig[i] == 'A' {
				sig[i] = 'B'
			} else {
				sig[i] = 'A'
			}
		}
		parts[2] = string(sig)
	case "none":
		parts[0] = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
		parts[2] = ""
	}
	return strings.Join(parts, ".")
}

func authGroup() Group {
	return Group{ID: "auth", Title: "Without a token or with a bad one", Description: "The FHIR API refuses requests that are not properly authorized, and the token endpoint answers mistakes with OAuth errors.", Tests: []Test{
		{ID: "auth-no-token", Title: "A request without a token gets 401 with WWW-Authenticate: Bearer",
			Description: "GET of a patient's record without Authorization is refused with 401 and a Bearer challenge.",
			Requirement: rfc6750,
			Run: func(t *T) {
				path := "Patient"
				if id := t.Config().PatientA.ID; id != "" {
					path = "Patient/" + id
				}
				r := t.Get(path, "")
				t.Check(r.Status == http.StatusUnauthorized, "status %d, want 401", r.Status)
				t.Check(strings.HasPrefix(strings.ToLower(r.Header.Get("WWW-Authenticate")), "bearer"), "WWW-Authenticate %q, want a Bearer challenge", r.Header.Get("WWW-Authenticate"))
			}},
		{ID: "auth-garbage-token", Title: "A malformed token gets 401",
			Description: "A bearer token that is not a token this server issued is refused.",
			Requirement: rfc6750,
			Run: func(t *T) {
				r := t.Get("Patient", "not-a-token")
				t.Check(r.Status == http.StatusUnauthorized, "status %d, want 401", r.Status)
			}},
		{ID: "auth-bad-signature", Title: "A token with a changed signature gets 401",
			Description: "Patient A's token with one character of its signature changed is refused: the server checks signatures.",
			Requirement: rfc6750,
			Run: func(t *T) {
				id, tok := t.patientA()
				if strings.Count(tok, ".") != 2 {
					t.Omitf("patient A's token is not a JWT")
				}
				r := t.Get("Patient/"+id, tamper(tok, "sig"))
				t.Check(r.Status == http.StatusUnauthorized, "status %d, want 401", r.Status)
			}},
		{ID: "auth-alg-none", Title: "A token re-signed with alg none gets 401",
			Description: "Patient A's token with its header changed to alg none and no signature is refused.",
			Requirement: "RFC 8725 section 3.1",
			Run: func(t *T) {
				id, tok := t.patientA()
				if strings.Count(tok, ".") != 2 {
					t.Omitf("patient A's token is not a JWT")
				}
				r := t.Get("Patient/"+id, tamper(tok, "none"))
				t.Check(r.Status == http.StatusUnauthorized, "status %d, want 401", r.Status)
			}},
		{ID: "auth-token-unsupported-grant", Title: "The token endpoint refuses an unknown grant type",
			Description: "grant_type=urn:example:nonsense → 400 unsupported_grant_type (or invalid_client when the client must authenticate first).",
			Requirement: rfc6749Err,
			Run: func(t *T) {
				r := t.Do(http.MethodPost, t.tokenEndpoint(), Req{Form: url.Values{"grant_type": {"urn:example:nonsense"}, "client_id": {"conformance-suite"}}})
				t.oauthError(r, []int{400, 401}, "unsupported_grant_type", "invalid_client", "invalid_request")
			}},
		{ID: "auth-token-bad-code", Title: "The token endpoint refuses a made-up authorization code",
			Description: "grant_type=authorization_code with a code it never issued → 400 invalid_grant (or 401 invalid_client for an unknown client).",
			Requirement: rfc6749Err,
			Run: func(t *T) {
				r := t.Do(http.MethodPost, t.tokenEndpoint(), Req{Form: url.Values{"grant_type": {"authorization_code"}, "code": {"made-up-code"},
					"redirect_uri": {"https://app.example.org/callback"}, "client_id": {"conformance-suite"}, "code_verifier": {strings.Repeat("v", 43)}}})
				t.oauthError(r, []int{400, 401}, "invalid_grant", "invalid_client")
			}},
		{ID: "auth-token-bad-client", Title: "The token endpoint refuses an unknown client's credentials",
			Description: "client_credentials with HTTP Basic credentials of a client that does not exist → 401 invalid_client.",
			Requirement: rfc6749Err,
			Run: func(t *T) {
				r := t.Do(http.MethodPost, t.tokenEndpoint(), Req{Form: url.Values{"grant_type": {"client_credentials"}, "scope": {"system/Patient.rs"}},
					Header: map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("no-such-client:wrong-secret"))}})
				t.oauthError(r, []int{400, 401}, "invalid_client")
			}},
		{ID: "auth-token-random-refresh", Title: "The token endpoint refuses a made-up refresh token",
			Description: "grant_type=refresh_token with a random refresh token → 400 invalid_grant (or 401 invalid_client).",
			Requirement: rfc6749Err,
			Run: func(t *T) {
				r := t.Do(http.MethodPost, t.tokenEndpoint(), Req{Form: url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"made-up-refresh-token"}, "client_id": {"conformance-suite"}}})
				t.oauthError(r, []int{400, 401}, "invalid_grant", "invalid_client")
			}},
		{ID: "auth-introspect-invalid", Title: "Introspection of a bad token says only that it is not active",
			Description: "POST introspection_endpoint with a made-up token (the request authenticated with a token of the run) → 200 {\"active\": false} and nothing else.",
			Requirement: rfc7662,
			Run: func(t *T) {
				ie := t.endpoint("introspection_endpoint")
				if ie == "" {
					t.Omitf("no introspection_endpoint is advertised")
				}
				tok := t.anyToken()
				if tok == "" {
					t.Skipf("needs a token to authenticate the introspection request")
				}
				r := t.Do(http.MethodPost, ie, Req{Token: tok, Form: url.Values{"token": {"made-up-token"}}})
				m := r.JSON()
				t.Check(r.Status == http.StatusOK, "status %d, want 200", r.Status)
				t.Check(m != nil && m["active"] == false && len(m) == 1, "body %s, want {\"active\":false}", r.Body)
			}},
		{ID: "auth-introspect-active", Title: "Introspection of patient A's token says it is active, for patient A",
			Description: "POST introspection_endpoint with patient A's token → active true, with scope and the patient in context.",
			Requirement: "SMART App Launch 2.2.0 token-introspection.html#required-fields",
			Run: func(t *T) {
				ie := t.endpoint("introspection_endpoint")
				if ie == "" {
					t.Omitf("no introspection_endpoint is advertised")
				}
				id, tok := t.patientA()
				r := t.Do(http.MethodPost, ie, Req{Token: tok, Form: url.Values{"token": {tok}}})
				m := r.JSON()
				t.Check(r.Status == http.StatusOK && m != nil && m["active"] == true, "status %d, body %s: want active", r.Status, r.Body)
				t.Check(str(m, "scope") != "", "no scope in %s", r.Body)
				t.Check(str(m, "patient") == id, "patient %q, want %q", str(m, "patient"), id)
			}},
	}}
}
