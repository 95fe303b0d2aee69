package auth

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/carta-fhir/carta/fhir"
	"github.com/golang-jwt/jwt/v5"
)

// MaxTokenLifetime bounds every access token Carta issues.
const MaxTokenLifetime = time.Hour

// Claims are the claims of a Carta access token.
type Claims struct {
	jwt.RegisteredClaims
	Scope    string `json:"scope"`
	Patient  string `json:"patient,omitempty"`
	FHIRUser string `json:"fhirUser,omitempty"`
	ClientID string `json:"client_id,omitempty"`
}

// Issuer mints access tokens for one issuer and audience.
type Issuer struct {
	Keys     *Keys
	Issuer   string // iss: the server's base URL
	Audience string // aud: the FHIR base URL
	Now      func() time.Time
}

// Grant is what an access token is for.
type Grant struct {
	Subject  string // sub
	Scope    string // space-separated scopes
	Patient  string // the patient in context, for patient/ scopes
	FHIRUser string // Patient/x, Practitioner/x, RelatedPerson/x
	ClientID string
	TTL      time.Duration
}

// Mint signs an access token. It fails when TTL is not within (0, MaxTokenLifetime].
func (is *Issuer) Mint(g Grant) (string, *Claims, error) {
	if g.TTL <= 0 || g.TTL > MaxTokenLifetime {
		return "", nil, fmt.Errorf("auth: token lifetime must be more than 0 and at most %s", MaxTokenLifetime)
	}
	now := time.Now
	if is.Now != nil {
		now = is.Now
	}
	t := now().Truncate(time.Second)
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", nil, err
	}
	c := &Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    is.Issuer,
			Subject:   g.Subject,
			Audience:  jwt.ClaimStrings{is.Audience},
			IssuedAt:  jwt.NewNumericDate(t),
			NotBefore: jwt.NewNumericDate(t),
			ExpiresAt: jwt.NewNumericDate(t.Add(g.TTL)),
			ID:        base64.RawURLEncoding.EncodeToString(jti),
		},
		Scope:    g.Scope,
		Patient:  g.Patient,
		FHIRUser: g.FHIRUser,
		ClientID: g.ClientID,
	}
	return is.MintClaims(c)
}

// MintClaims signs claims as given, with the current key.
func (is *Issuer) MintClaims(c *Claims) (string, *Claims, error) {
	key, kid := is.Keys.signingKey()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		return "", nil, fmt.Errorf("auth: signing: %w", err)
	}
	return s, c, nil
}

// Revocations answers whether a token id was revoked. Implementations keep the answer in memory so the check
// costs nothing on the request path.
type Revocations interface {
	Revoked(jti string) bool
}

// Verifier checks bearer tokens: signature with the server's keys and RS256 only, issuer, audience, expiry and
// not-before, and revocation. Verified tokens are cached until they expire, so a token's signature is checked
// once, not on every request.
type Verifier struct {
	Keys     *Keys
	Issuer   string
	Audience string
	Revoked  Revocations
	Now      func() time.Time

	mu    sync.RWMutex
	cache map[string]*Principal
}

// maxCached bounds the verified-token cache; past it the cache starts over.
const maxCached = 100_000

// leeway tolerates clock skew between replicas for exp and nbf.
const leeway = 5 * time.Second

// Unauthorized is a 401 *fhir.Error with the WWW-Authenticate header RFC 6750 asks for. code is "" when no
// token was sent.
func Unauthorized(code, desc string) *fhir.Error {
	h := `Bearer realm="carta"`
	if code != "" {
		h += fmt.Sprintf(`, error="%s", error_description="%s"`, code, strings.ReplaceAll(desc, `"`, "'"))
	}
	issue := fhir.IssueLogin
	if code == "invalid_token" && strings.Contains(desc, "expired") {
		issue = fhir.IssueExpired
	}
	e := fhir.Errorf(http.StatusUnauthorized, issue, "%s", desc)
	e.Headers = map[string]string{"WWW-Authenticate": h}
	return e
}

// Verify checks a bearer token and returns who is calling. Failures are 401 *fhir.Error values that say why.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Principal, error) {
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	v.mu.RLock()
	p, ok := v.cache[raw]
	v.mu.RUnlock()
	if ok {
		if now().After(p.Expires.Add(leeway)) {
			v.mu.Lock()
			delete(v.cache, raw)
			v.mu.Unlock()
			return nil, Unauthorized("invalid_token", "the access token has expired")
		}
		if v.Revoked != nil && v.Revoked.Revoked(p.JTI) {
			return nil, Unauthorized("invalid_token", "the access token has been revoked")
		}
		return p, nil
	}
	claims := &Claims{}
	_, err := jwt.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		key, ok := v.Keys.publicKey(ctx, kid)
		if !ok {
			return nil, fmt.Errorf("the token was not signed by this server (unknown key id %q)", kid)
		}
		return key, nil
	}, jwt.WithValidMethods([]string{SigningAlg}), jwt.WithIssuer(v.Issuer), jwt.WithAudience(v.Audience),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithLeeway(leeway), jwt.WithTimeFunc(now))
	if err != nil {
		return nil, Unauthorized("invalid_token", describeJWTError(err))
	}
	if claims.ID == "" {
		return nil, Unauthorized("invalid_token", "the access token has no jti")
	}
	if v.Revoked != nil && v.Revoked.Revoked(claims.ID) {
		return nil, Unauthorized("invalid_token", "the access token has been revoked")
	}
	p = newPrincipal(claims)
	v.mu.Lock()
	if v.cache == nil || len(v.cache) >= maxCached {
		v.cache = make(map[string]*Principal, 1024)
	}
	v.cache[raw] = p
	v.mu.Unlock()
	return p, nil
}

func describeJWTError(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "the access token is not a well-formed JWT"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "the access token's signature is invalid or uses an algorithm other than " + SigningAlg
	case errors.Is(err, jwt.ErrTokenExpired):
		return "the access token has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "the access token is not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "the access token was issued by another server"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "the access token is for another audience than this FHIR server"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "the access token lacks a required claim: " + err.Error()
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "the access token cannot be verified: " + err.Error()
	}
	return "the access token is invalid: " + err.Error()
}
