package auth

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/store"
)

// Store is what the authorization server needs from storage.
type Store interface {
	Client(ctx context.Context, id string) (*store.Client, error)
	User(ctx context.Context, username string) (*store.User, error)
	PutRefreshToken(ctx context.Context, t *store.RefreshToken) error
	UseRefreshToken(ctx context.Context, hash string) (*store.RefreshToken, error)
	RefreshTokenByHash(ctx context.Context, hash string) (*store.RefreshToken, error)
	RecordIssued(ctx context.Context, jti, family string, exp time.Time) error
	RevokeFamily(ctx context.Context, family string) (map[string]time.Time, error)
	Families(ctx context.Context, username, clientID string) ([]string, error)
	Launch(ctx context.Context, id string) (*store.Launch, error)
	Read(ctx context.Context, typ, id string, acc *fhir.Access) (*store.Stored, error)
}

// State is short-lived state shared by replicas: codes, sessions, used assertion ids, counters.
type State interface {
	Put(ctx context.Context, key string, val []byte, ttl time.Duration) error
	Get(ctx context.Context, key string) ([]byte, bool, error)
	Take(ctx context.Context, key string) ([]byte, bool, error)
	Add(ctx context.Context, key string, val []byte, ttl time.Duration) (bool, error)
	Incr(ctx context.Context, key string, ttl time.Duration) (int64, error)
	Del(ctx context.Context, key string) error
}

// Revoker revokes access tokens everywhere and answers whether one is revoked.
type Revoker interface {
	Revocations
	Revoke(ctx context.Context, jti string, exp time.Time) error
}

// Lifetimes of what the authorization server issues.
const (
	AppTokenTTL     = time.Hour
	BackendTokenTTL = 5 * time.Minute
	CodeTTL         = 60 * time.Second
	SessionTTL      = 15 * time.Minute
	OfflineTTL      = 90 * 24 * time.Hour
	OnlineTTL       = 12 * time.Hour
	LaunchTTL       = 10 * time.Minute
	// MaxAssertionLifetime is how far ahead a client assertion's exp may be.
	MaxAssertionLifetime = 5 * time.Minute
)

// Login attempt limits, per account and per address, within LoginWindow.
const (
	LoginWindow      = 15 * time.Minute
	MaxLoginFailures = 5
	MaxAddrFailures  = 20
)

// Server is Carta's SMART App Launch 2.x authorization server: authorize, token, introspect and revoke, with
// the login and consent steps in between. It knows nothing of HTTP routing; handlers adapts it.
type Server struct {
	Store       Store
	State       State
	Issuer      *Issuer
	Revocations Revoker
	// BaseURL is the issuer (the server's public URL); the FHIR base is BaseURL + "/fhir".
	BaseURL string
	Now     func() time.Time
	// HTTPClient fetches client JWKS URLs.
	HTTPClient *http.Client

	jwksMu    sync.Mutex
	jwksCache map[string]cachedJWKS
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// FHIRBase is the audience of the tokens this server issues.
func (s *Server) FHIRBase() string { return s.BaseURL + "/fhir" }

// Endpoint URLs.
func (s *Server) authorizeURL() string  { return s.BaseURL + "/auth/authorize" }
func (s *Server) tokenURL() string      { return s.BaseURL + "/auth/token" }
func (s *Server) introspectURL() string { return s.BaseURL + "/auth/introspect" }
func (s *Server) revokeURL() string     { return s.BaseURL + "/auth/revoke" }
func (s *Server) styleURL() string      { return s.BaseURL + "/auth/style.json" }

// TokenURL is the token endpoint (the audience of client assertions).
func (s *Server) TokenURL() string { return s.tokenURL() }

// Capabilities are the SMART capabilities Carta offers.
var Capabilities = []string{
	"launch-standalone", "launch-ehr", "client-public", "client-confidential-symmetric", "client-confidential-asymmetric",
	"context-standalone-patient", "context-ehr-patient", "permission-patient", "permission-user", "permission-offline",
	"permission-online", "permission-v1", "permission-v2", "sso-openid-connect", "authorize-post", "context-banner",
	"context-style",
}

// AssertionAlgs are the algorithms accepted for client assertions (SMART requires RS384 and ES384).
var AssertionAlgs = []string{"RS384", "ES384", "RS256", "ES256", "RS512", "ES512", "PS256", "PS384", "PS512"}

// Configuration is the document served at [FHIR base]/.well-known/smart-configuration.
func (s *Server) Configuration() map[string]any {
	return map[string]any{
		"issuer":                                           s.BaseURL,
		"jwks_uri":                                         s.BaseURL + "/.well-known/jwks.json",
		"authorization_endpoint":                           s.authorizeURL(),
		"token_endpoint":                                   s.tokenURL(),
		"introspection_endpoint":                           s.introspectURL(),
		"revocation_endpoint":                              s.revokeURL(),
		"grant_types_supported":                            []string{"authorization_code", "refresh_token", "client_credentials"},
		"response_types_supported":                         []string{"code"},
		"code_challenge_methods_supported":                 []string{"S256"},
		"token_endpoint_auth_methods_supported":            []string{"none", "client_secret_basic", "client_secret_post", "private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": AssertionAlgs,
		"scopes_supported": []string{"openid", "fhirUser", "launch", "launch/patient", "offline_access", "online_access",
			"patient/*.rs", "patient/*.cruds", "user/*.rs", "user/*.cruds", "system/*.rs", "system/*.cruds",
			"patient/*.read", "patient/*.write", "user/*.read", "user/*.write", "system/*.read", "system/*.write"},
		"capabilities": Capabilities,
	}
}

// OpenIDConfiguration is the OpenID Connect discovery document at [issuer]/.well-known/openid-configuration.
func (s *Server) OpenIDConfiguration() map[string]any {
	return map[string]any{
		"issuer":                                s.BaseURL,
		"jwks_uri":                              s.BaseURL + "/.well-known/jwks.json",
		"authorization_endpoint":                s.authorizeURL(),
		"token_endpoint":                        s.tokenURL(),
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{SigningAlg},
		"scopes_supported":                      []string{"openid", "fhirUser"},
		"token_endpoint_auth_methods_supported": []string{"none", "client_secret_basic", "client_secret_post", "private_key_jwt"},
		"claims_supported":                      []string{"iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"},
		"code_challenge_methods_supported":      []string{"S256"},
	}
}

// Style is the styling hint at smart_style_url (SMART context-style).
func (s *Server) Style() map[string]any {
	return map[string]any{
		"color_background": "#f6f7f9", "color_error": "#b3261e", "color_highlight": "#1f5fbf",
		"color_modal_backdrop": "", "color_success": "#1e7a34", "color_text": "#1b1f24",
		"dim_border_radius": "6px", "dim_font_size": "16px", "dim_spacing_size": "16px",
		"font_family_body": "system-ui, sans-serif", "font_family_heading": "system-ui, sans-serif",
	}
}

// OAuthError is an OAuth 2.0 error (RFC 6749 §4.1.2.1 and §5.2).
type OAuthError struct {
	Status      int
	Code        string
	Description string
	// Basic asks for WWW-Authenticate: Basic (the client authenticated with HTTP Basic and failed).
	Basic bool
	// RedirectURI and State, when set, say the error goes back to the client by redirect.
	RedirectURI string
	State       string
}

func (e *OAuthError) Error() string { return e.Code + ": " + e.Description }

func oauthErr(status int, code, format string, args ...any) *OAuthError {
	return &OAuthError{Status: status, Code: code, Description: fmt.Sprintf(format, args...)}
}

// PageError is a problem shown to the person in the browser, never sent to the client by redirect (unknown
// client, redirect URI that does not match).
type PageError struct {
	Status  int
	Message string
}

func (e *PageError) Error() string { return e.Message }

func randomToken(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func splitFields(s string) []string { return strings.Fields(s) }

func has(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}
