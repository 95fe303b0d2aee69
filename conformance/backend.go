package conformance

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	smartBackend   = "SMART App Launch 2.2.0 backend-services.html"
	smartAssertion = "SMART App Launch 2.2.0 client-confidential-asymmetric.html#authenticating-to-the-token-endpoint"
	assertionType  = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

func parsePrivateKey(s string) (crypto.Signer, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		if sg, ok := k.(crypto.Signer); ok {
			return sg, nil
		}
		return nil, errors.New("the PKCS#8 key cannot sign")
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	return nil, errors.New("not a PKCS#8, PKCS#1 or SEC 1 private key")
}

// assertion describes a client assertion, correct unless a field is changed.
type assertion struct {
	iss, sub, aud, jti, kid, alg string
	exp                          time.Time
	key                          crypto.Signer // nil: the configured key
}

// backend returns the configured client (the test skips without one) and the token endpoint (omitted when the
// server does not advertise Backend Services).
func (t *T) backend() (*BackendClient, string) {
	sc := t.needSMART()
	grants := list(sc, "grant_types_supported")
	cc := false
	for _, g := range grants {
		cc = cc || g == "client_credentials"
	}
	if !cc {
		t.Omitf("client_credentials is not among grant_types_supported")
	}
	b := t.Config().Backend
	if b == nil {
		t.Skipf("needs a registered backend client (backend: clientId, privateKey)")
	}
	return b, t.tokenEndpoint()
}

// good is a correct assertion for the configured client.
func (t *T) good(b *BackendClient, te string) assertion {
	return assertion{iss: b.ClientID, sub: b.ClientID, aud: te, jti: randomID(), kid: b.KeyID, alg: b.Alg, exp: time.Now().Add(4 * time.Minute)}
}

func randomID() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// sign makes the JWT of an assertion.
func (t *T) sign(b *BackendClient, a assertion) string {
	claims := jwt.MapClaims{"iss": a.iss, "sub": a.sub, "aud": a.aud, "jti": a.jti, "exp": a.exp.Unix(), "iat": time.Now().Unix()}
	switch a.alg {
	case "none":
		tok := jwt.NewWithClaims(jwt.SigningMethodNone, claims)
		tok.Header["kid"] = a.kid
		s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Errorf("signing: %v", err)
		}
		return s
	case "HS256":
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
		tok.Header["kid"] = a.kid
		s, err := tok.SignedString([]byte(b.ClientID + "-not-a-shared-secret"))
		if err != nil {
			t.Errorf("signing: %v", err)
		}
		return s
	}
	key := a.key
	if key == nil {
		var err error
		if key, err = parsePrivateKey(b.PrivateKey); err != nil {
			t.Errorf("the backend key: %v", err)
		}
	}
	m := jwt.GetSigningMethod(a.alg)
	tok := jwt.NewWithClaims(m, claims)
	if a.kid != "" {
		tok.Header["kid"] = a.kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Errorf("signing: %v", err)
	}
	return s
}

// exchange posts a client_credentials request with an assertion.
func (t *T) exchange(b *BackendClient, te, jwtStr, aType string) *Resp {
	return t.Do(http.MethodPost, te, Req{Form: url.Values{"grant_type": {"client_credentials"}, "scope": {b.Scope},
		"client_assertion_type": {aType}, "client_assertion": {jwtStr}}})
}

// otherKey is a fresh key of the configured algorithm's kind (not registered anywhere).
func otherKey(alg string) crypto.Signer {
	if alg == "ES384" {
		k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		return k
	}
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	return k
}

func backendGroup() Group {
	refused := func(id, title, desc string, change func(a *assertion, b *BackendClient)) Test {
		return Test{ID: id, Title: title, Description: desc, Requirement: smartAssertion, Run: func(t *T) {
			b, te := t.backend()
			a := t.good(b, te)
			change(&a, b)
			r := t.exchange(b, te, t.sign(b, a), assertionType)
			t.oauthError(r, []int{400, 401}, "invalid_client", "invalid_grant", "invalid_request")
			t.Check(str(r.JSON(), "access_token") == "", "an access token was issued")
		}}
	}
	return Group{ID: "backend", Title: "SMART Backend Services", Description: "When client_credentials is advertised: a correct private_key_jwt assertion gets a short-lived token; every kind of bad assertion is refused.", Tests: []Test{
		{ID: "backend-token", Title: "A correct assertion gets a bearer token of at most 5 minutes, and no refresh token",
			Description: "client_credentials with a private_key_jwt assertion signed by the registered key → 200: access_token, token_type bearer, expires_in ≤ 300, scope within the request, no refresh_token; the token reads the FHIR API.",
			Requirement: smartBackend,
			Run: func(t *T) {
				b, te := t.backend()
				r := t.exchange(b, te, t.sign(b, t.good(b, te)), assertionType)
				m := r.JSON()
				if r.Status != http.StatusOK || str(m, "access_token") == "" {
					t.Fatalf("status %d, no access token", r.Status)
				}
				t.Check(strings.EqualFold(str(m, "token_type"), "bearer"), "token_type %q", str(m, "token_type"))
				exp, _ := m["expires_in"].(float64)
				t.Check(exp > 0 && exp <= 300, "expires_in %v, want 1..300", m["expires_in"])
				t.Check(m["refresh_token"] == nil, "a refresh token was issued")
				for _, s := range strings.Fields(str(m, "scope")) {
					t.Check(strings.HasPrefix(s, "system/"), "granted scope %q is not a system scope", s)
				}
				res := t.Get("metadata", str(m, "access_token"))
				t.Check(res.Status == http.StatusOK, "the token cannot read metadata: %d", res.Status)
			}},
		refused("backend-bad-signature", "An assertion signed by another key is refused", "Same claims and kid, signed with a key the server does not know.",
			func(a *assertion, b *BackendClient) { a.key = otherKey(b.Alg) }),
		refused("backend-wrong-aud", "An assertion for another audience is refused", "aud is the FHIR base instead of the token endpoint.",
			func(a *assertion, _ *BackendClient) {
				a.aud = strings.TrimSuffix(a.aud, "/token") + "/not-the-token-endpoint"
			}),
		refused("backend-expired", "An expired assertion is refused", "exp one minute in the past.",
			func(a *assertion, _ *BackendClient) { a.exp = time.Now().Add(-time.Minute) }),
		refused("backend-far-exp", "An assertion valid for more than 5 minutes is refused", "exp 30 minutes ahead.",
			func(a *assertion, _ *BackendClient) { a.exp = time.Now().Add(30 * time.Minute) }),
		refused("backend-unknown-kid", "An assertion with an unknown key id is refused", "kid names no key of the client.",
			func(a *assertion, b *BackendClient) { a.kid = "no-such-key-" + randomID(); a.key = otherKey(b.Alg) }),
		refused("backend-alg-none", "An unsigned assertion (alg none) is refused", "alg none, no signature.",
			func(a *assertion, _ *BackendClient) { a.alg = "none" }),
		refused("backend-alg-hs256", "An HMAC-signed assertion (HS256) is refused", "alg HS256 with a made-up secret.",
			func(a *assertion, _ *BackendClient) { a.alg = "HS256" }),
		refused("backend-iss-not-sub", "An assertion whose iss is not its sub is refused", "iss another client id.",
			func(a *assertion, _ *BackendClient) { a.iss = "someone-else" }),
		{ID: "backend-replayed-jti", Title: "A replayed assertion (same jti) is refused",
			Description: "The same assertion sent twice: the second is refused.",
			Requirement: smartAssertion,
			Run: func(t *T) {
				b, te := t.backend()
				s := t.sign(b, t.good(b, te))
				if r := t.exchange(b, te, s, assertionType); r.Status != http.StatusOK {
					t.Fatalf("the first use: status %d", r.Status)
				}
				r := t.exchange(b, te, s, assertionType)
				t.oauthError(r, []int{400, 401}, "invalid_client", "invalid_grant")
			}},
		{ID: "backend-assertion-type", Title: "A wrong client_assertion_type is refused",
			Description: "client_assertion_type other than jwt-bearer → 400 or 401.",
			Requirement: "RFC 7523 section 2.2",
			Run: func(t *T) {
				b, te := t.backend()
				r := t.exchange(b, te, t.sign(b, t.good(b, te)), "urn:example:not-jwt-bearer")
				t.oauthError(r, []int{400, 401}, "invalid_client", "invalid_request")
			}},
	}}
}
