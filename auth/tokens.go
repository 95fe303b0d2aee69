package auth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/carta-fhir/carta/store"
	"github.com/golang-jwt/jwt/v5"
)

// TokenResponse is the token endpoint's answer (RFC 6749 §5.1 plus SMART's context).
type TokenResponse struct {
	AccessToken       string `json:"access_token"`
	TokenType         string `json:"token_type"`
	ExpiresIn         int64  `json:"expires_in"`
	Scope             string `json:"scope"`
	RefreshToken      string `json:"refresh_token,omitempty"`
	IDToken           string `json:"id_token,omitempty"`
	Patient           string `json:"patient,omitempty"`
	Encounter         string `json:"encounter,omitempty"`
	NeedPatientBanner *bool  `json:"need_patient_banner,omitempty"`
	SmartStyleURL     string `json:"smart_style_url,omitempty"`
}

// ClientCredentials is how a client presented itself at an endpoint.
type ClientCredentials struct {
	BasicUser, BasicPassword string
	HasBasic                 bool
}

const assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// Token answers the token endpoint. Errors are *OAuthError.
func (s *Server) Token(ctx context.Context, form url.Values, cred ClientCredentials) (*TokenResponse, error) {
	switch gt := form.Get("grant_type"); gt {
	case "authorization_code":
		return s.tokenFromCode(ctx, form, cred)
	case "refresh_token":
		return s.tokenFromRefresh(ctx, form, cred)
	case "client_credentials":
		return s.tokenForBackend(ctx, form, cred)
	case "":
		return nil, oauthErr(http.StatusBadRequest, "invalid_request", "grant_type is required")
	default:
		return nil, oauthErr(http.StatusBadRequest, "unsupported_grant_type", "grant_type %q is not supported (authorization_code, refresh_token, client_credentials)", gt)
	}
}

// authenticateClient identifies and authenticates the client: a public client by client_id, a confidential one by
// its secret (HTTP Basic or client_secret_post) or a signed assertion (private_key_jwt).
func (s *Server) authenticateClient(ctx context.Context, form url.Values, cred ClientCredentials) (*store.Client, error) {
	bad := func(format string, args ...any) error {
		e := oauthErr(http.StatusUnauthorized, "invalid_client", format, args...)
		e.Basic = cred.HasBasic
		return e
	}
	if a := form.Get("client_assertion"); a != "" || form.Get("client_assertion_type") != "" {
		if form.Get("client_assertion_type") != assertionType {
			return nil, bad("client_assertion_type must be %s", assertionType)
		}
		return s.verifyAssertion(ctx, a, form.Get("client_id"))
	}
	id, secret := form.Get("client_id"), form.Get("client_secret")
	if cred.HasBasic {
		var err1, err2 error
		id, err1 = url.QueryUnescape(cred.BasicUser)
		secret, err2 = url.QueryUnescape(cred.BasicPassword)
		if err1 != nil || err2 != nil {
			return nil, bad("the Basic credentials are not form-encoded")
		}
		if f := form.Get("client_id"); f != "" && f != id {
			return nil, bad("client_id differs between the Authorization header and the form")
		}
	}
	if id == "" {
		return nil, bad("the client is not identified: send client_id, HTTP Basic credentials or a client assertion")
	}
	c, err := s.Store.Client(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && c.Disabled != 0) {
		CheckSecret(secret, dummyHash)
		return nil, bad("client authentication failed")
	}
	if err != nil {
		return nil, err
	}
	switch {
	case secret != "":
		if c.SecretHash == "" || !CheckSecret(secret, c.SecretHash) {
			return nil, bad("client authentication failed")
		}
	case c.Kind != "public":
		return nil, bad("client %s is confidential and must authenticate", id)
	}
	return c, nil
}

// verifyAssertion checks a private_key_jwt client assertion (RFC 7523; SMART Backend Services).
func (s *Server) verifyAssertion(ctx context.Context, assertion, formClientID string) (*store.Client, error) {
	bad := func(format string, args ...any) error {
		return oauthErr(http.StatusUnauthorized, "invalid_client", format, args...)
	}
	claims := &jwt.RegisteredClaims{}
	unverified, _, err := jwt.NewParser().ParseUnverified(assertion, claims)
	if err != nil {
		return nil, bad("the client assertion is not a JWT")
	}
	if claims.Issuer == "" || claims.Issuer != claims.Subject {
		return nil, bad("the client assertion's iss and sub must both be the client_id")
	}
	if formClientID != "" && formClientID != claims.Issuer {
		return nil, bad("client_id differs from the assertion's issuer")
	}
	c, err := s.Store.Client(ctx, claims.Issuer)
	if errors.Is(err, store.ErrNotFound) || (err == nil && c.Disabled != 0) {
		return nil, bad("client %q is not registered", claims.Issuer)
	}
	if err != nil {
		return nil, err
	}
	if c.JWKS == "" && c.JWKSURL == "" {
		return nil, bad("client %s has no registered keys for private_key_jwt", c.ID)
	}
	kid, _ := unverified.Header["kid"].(string)
	parsed := &jwt.RegisteredClaims{}
	_, err = jwt.ParseWithClaims(assertion, parsed, func(t *jwt.Token) (any, error) {
		return s.clientKey(ctx, c, kid, t.Method.Alg())
	}, jwt.WithValidMethods(AssertionAlgs), jwt.WithAudience(s.tokenURL()), jwt.WithExpirationRequired(),
		jwt.WithIssuer(c.ID), jwt.WithSubject(c.ID), jwt.WithLeeway(leeway), jwt.WithTimeFunc(s.now))
	if err != nil {
		return nil, bad("the client assertion is not valid: %s", assertionProblem(err))
	}
	if parsed.ExpiresAt.Time.After(s.now().Add(MaxAssertionLifetime + leeway)) {
		return nil, bad("the client assertion expires more than 5 minutes ahead")
	}
	if parsed.ID == "" {
		return nil, bad("the client assertion has no jti")
	}
	first, err := s.State.Add(ctx, "jti:"+c.ID+":"+parsed.ID, []byte("1"), time.Until(parsed.ExpiresAt.Time)+leeway+time.Minute)
	if err != nil {
		return nil, err
	}
	if !first {
		return nil, bad("the client assertion was already used (jti %q replayed)", parsed.ID)
	}
	return c, nil
}

func assertionProblem(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "signature invalid or algorithm not allowed (use RS384 or ES384)"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "aud must be the token endpoint " + "URL"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "exp is required"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "no registered key matches (kid)"
	}
	return err.Error()
}

type cachedJWKS struct {
	keys    []jwkset.JWK
	fetched time.Time
}

// clientKey finds the public key of a client's registered JWKS (inline, or fetched from its URL and cached for
// five minutes) for kid and alg.
func (s *Server) clientKey(ctx context.Context, c *store.Client, kid, alg string) (any, error) {
	keys, err := s.clientKeys(ctx, c, false)
	if err != nil {
		return nil, err
	}
	if k := pickKey(keys, kid, alg); k != nil {
		return k, nil
	}
	if c.JWKSURL != "" {
		// The client may have rotated: fetch again once.
		if keys, err = s.clientKeys(ctx, c, true); err == nil {
			if k := pickKey(keys, kid, alg); k != nil {
				return k, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: no key with kid %q for %s", jwt.ErrTokenUnverifiable, kid, alg)
}

func pickKey(keys []jwkset.JWK, kid, alg string) any {
	for _, k := range keys {
		m := k.Marshal()
		if kid != "" && m.KID != kid {
			continue
		}
		if m.ALG != "" && string(m.ALG) != alg {
			continue
		}
		return k.Key()
	}
	return nil
}

func (s *Server) clientKeys(ctx context.Context, c *store.Client, refresh bool) ([]jwkset.JWK, error) {
	raw := []byte(c.JWKS)
	if c.JWKS == "" {
		s.jwksMu.Lock()
		cached, ok := s.jwksCache[c.JWKSURL]
		s.jwksMu.Unlock()
		if ok && !refresh && s.now().Sub(cached.fetched) < 5*time.Minute {
			return cached.keys, nil
		}
		b, err := s.fetch(ctx, c.JWKSURL)
		if err != nil {
			return nil, fmt.Errorf("%w: fetching the client's JWKS: %v", jwt.ErrTokenUnverifiable, err)
		}
		raw = b
	}
	var set jwkset.JWKSMarshal
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("%w: the client's JWKS is not JSON", jwt.ErrTokenUnverifiable)
	}
	keys, err := set.JWKSlice()
	if err != nil {
		return nil, fmt.Errorf("%w: the client's JWKS: %v", jwt.ErrTokenUnverifiable, err)
	}
	if c.JWKS == "" {
		s.jwksMu.Lock()
		if s.jwksCache == nil {
			s.jwksCache = map[string]cachedJWKS{}
		}
		s.jwksCache[c.JWKSURL] = cachedJWKS{keys: keys, fetched: s.now()}
		s.jwksMu.Unlock()
	}
	return keys, nil
}

func (s *Server) fetch(ctx context.Context, u string) ([]byte, error) {
	client := s.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	res, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %d", u, res.StatusCode)
	}
	return io.ReadAll(io.LimitReader(res.Body, 1<<20))
}

func hashToken(t string) string {
	sum := sha256.Sum256([]byte(t))
	return hex.EncodeToString(sum[:])
}

func (s *Server) tokenFromCode(ctx context.Context, form url.Values, cred ClientCredentials) (*TokenResponse, error) {
	c, err := s.authenticateClient(ctx, form, cred)
	if err != nil {
		return nil, err
	}
	code := form.Get("code")
	if code == "" {
		return nil, oauthErr(http.StatusBadRequest, "invalid_request", "code is required")
	}
	b, ok, err := s.State.Take(ctx, "code:"+code)
	if err != nil {
		return nil, err
	}
	if !ok {
		// A code used twice: refuse, and revoke what its first use issued (RFC 6749 §4.1.2).
		if fam, used, _ := s.State.Get(ctx, "codeused:"+code); used {
			s.revokeFamily(ctx, string(fam))
			return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "the authorization code was already used; the tokens issued for it are revoked")
		}
		return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "the authorization code is unknown or expired (codes live 60 seconds)")
	}
	var g codeGrant
	if err := json.Unmarshal(b, &g); err != nil {
		return nil, err
	}
	if err := s.State.Put(ctx, "codeused:"+code, []byte(g.Family), 10*time.Minute); err != nil {
		return nil, err
	}
	switch {
	case g.ClientID != c.ID:
		return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "the authorization code was issued to another client")
	case form.Get("redirect_uri") != g.RedirectURI:
		return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "redirect_uri does not match the one of the authorization request")
	}
	verifier := form.Get("code_verifier")
	if verifier == "" {
		return nil, oauthErr(http.StatusBadRequest, "invalid_request", "code_verifier is required (PKCE)")
	}
	sum := sha256.Sum256([]byte(verifier))
	if base64.RawURLEncoding.EncodeToString(sum[:]) != g.Challenge {
		return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "code_verifier does not match the code_challenge")
	}
	return s.issue(ctx, c, g, true)
}

// issue mints the access token (and refresh and ID tokens when granted) for a grant.
func (s *Server) issue(ctx context.Context, c *store.Client, g codeGrant, withID bool) (*TokenResponse, error) {
	scopes := splitFields(g.Scope)
	tok, claims, err := s.Issuer.Mint(Grant{Subject: g.Subject, Scope: g.Scope, Patient: g.Patient, FHIRUser: g.FHIRUser, ClientID: c.ID, TTL: AppTokenTTL})
	if err != nil {
		return nil, err
	}
	if err := s.Store.RecordIssued(ctx, claims.ID, g.Family, claims.ExpiresAt.Time); err != nil {
		return nil, err
	}
	banner := g.EHR
	resp := &TokenResponse{AccessToken: tok, TokenType: "Bearer", ExpiresIn: int64(AppTokenTTL.Seconds()), Scope: g.Scope,
		Patient: g.Patient, Encounter: g.Encounter, NeedPatientBanner: &banner, SmartStyleURL: s.styleURL()}
	if has(scopes, "offline_access") || has(scopes, "online_access") {
		ttl := OnlineTTL
		if has(scopes, "offline_access") {
			ttl = OfflineTTL
		}
		rt := randomToken(32)
		err := s.Store.PutRefreshToken(ctx, &store.RefreshToken{Hash: hashToken(rt), Family: g.Family, ClientID: c.ID, Subject: g.Subject,
			FHIRUser: g.FHIRUser, Patient: g.Patient, Scope: g.Scope, Expires: s.now().Add(ttl).Unix()})
		if err != nil {
			return nil, err
		}
		resp.RefreshToken = rt
	}
	if withID && has(scopes, "openid") && g.FHIRUser != "" {
		idc := jwt.MapClaims{"iss": s.BaseURL, "sub": g.Subject, "aud": c.ID, "iat": s.now().Unix(),
			"exp": s.now().Add(AppTokenTTL).Unix(), "auth_time": g.AuthTime}
		if has(scopes, "fhirUser") {
			idc["fhirUser"] = s.FHIRBase() + "/" + g.FHIRUser
		}
		if g.Nonce != "" {
			idc["nonce"] = g.Nonce
		}
		key, kid := s.Issuer.Keys.signingKey()
		t := jwt.NewWithClaims(jwt.SigningMethodRS256, idc)
		t.Header["kid"] = kid
		if resp.IDToken, err = t.SignedString(key); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

func (s *Server) revokeFamily(ctx context.Context, family string) error {
	issued, err := s.Store.RevokeFamily(ctx, family)
	if err != nil {
		return err
	}
	for jti, exp := range issued {
		if err := s.Revocations.Revoke(ctx, jti, exp); err != nil {
			return err
		}
	}
	return nil
}

// EndGrants revokes every grant of a user (by username) or of a client: their refresh tokens stop working and
// the access tokens issued under them are refused at once. `carta users disable` and `carta clients remove` call
// it. It returns how many grants it ended.
func (s *Server) EndGrants(ctx context.Context, username, clientID string) (int, error) {
	if username == "" && clientID == "" {
		return 0, errors.New("auth: EndGrants needs a user or a client")
	}
	families, err := s.Store.Families(ctx, username, clientID)
	if err != nil {
		return 0, err
	}
	for _, f := range families {
		if err := s.revokeFamily(ctx, f); err != nil {
			return 0, err
		}
	}
	n := len(families)
	if clientID != "" {
		// A backend service's live access tokens are its one grant.
		issued, err := s.Store.RevokeFamily(ctx, backendFamily(clientID))
		if err != nil {
			return 0, err
		}
		for jti, exp := range issued {
			if err := s.Revocations.Revoke(ctx, jti, exp); err != nil {
				return 0, err
			}
		}
		if len(issued) > 0 {
			n++
		}
	}
	return n, nil
}

// backendFamily is the grant family under which a backend service's access tokens are recorded.
func backendFamily(clientID string) string { return "backend:" + clientID }

// tokenFromRefresh rotates a refresh token. A public client need not identify itself (RFC 6749 §6 asks
// authentication of confidential clients only, and SMART's refresh request has no client_id; fhirclient sends
// none): the token names its client, which must then be public. A client that does identify itself must be the
// token's.
func (s *Server) tokenFromRefresh(ctx context.Context, form url.Values, cred ClientCredentials) (*TokenResponse, error) {
	var c *store.Client
	if form.Get("client_id") != "" || cred.HasBasic || form.Get("client_assertion") != "" || form.Get("client_assertion_type") != "" {
		var err error
		if c, err = s.authenticateClient(ctx, form, cred); err != nil {
			return nil, err
		}
	}
	rt := form.Get("refresh_token")
	if rt == "" {
		return nil, oauthErr(http.StatusBadRequest, "invalid_request", "refresh_token is required")
	}
	hash := hashToken(rt)
	stored, err := s.Store.RefreshTokenByHash(ctx, hash)
	if errors.Is(err, store.ErrNotFound) {
		return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "the refresh token is unknown")
	}
	if err != nil {
		return nil, err
	}
	if c == nil {
		c, err = s.Store.Client(ctx, stored.ClientID)
		switch {
		case errors.Is(err, store.ErrNotFound) || (err == nil && c.Disabled != 0):
			return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "the refresh token's client is no longer registered")
		case err != nil:
			return nil, err
		case c.Kind != "public":
			return nil, oauthErr(http.StatusUnauthorized, "invalid_client", "client %s is confidential and must authenticate", c.ID)
		}
	}
	// Checks that do not show the token leaked come first and leave it usable.
	if stored.ClientID != c.ID {
		return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "the refresh token was issued to another client")
	}
	scope := stored.Scope
	if asked := form.Get("scope"); asked != "" {
		have := splitFields(stored.Scope)
		for _, sc := range splitFields(asked) {
			if !has(have, sc) {
				return nil, oauthErr(http.StatusBadRequest, "invalid_scope", "scope %q was not part of the original grant; a refresh may only narrow it", sc)
			}
		}
		scope = strings.Join(splitFields(asked), " ")
	}
	if stored.Revoked != 0 {
		return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "the refresh token was revoked")
	}
	if s.now().Unix() > stored.Expires {
		return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "the refresh token has expired")
	}
	if stored.Subject != "" && stored.FHIRUser != "" {
		// The person behind the grant must still be allowed in (a disabled account ends its grants, and this
		// holds even for one racing the disabling).
		u, err := s.Store.User(ctx, stored.Subject)
		if errors.Is(err, store.ErrNotFound) || (err == nil && u.Disabled != 0) {
			return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "the account this grant belongs to is disabled")
		} else if err != nil {
			return nil, err
		}
	}
	stored, err = s.Store.UseRefreshToken(ctx, hash)
	if err != nil {
		return nil, err
	}
	if stored.Used != 0 {
		// Reuse means the token leaked: end the whole grant.
		if err := s.revokeFamily(ctx, stored.Family); err != nil {
			return nil, err
		}
		return nil, oauthErr(http.StatusBadRequest, "invalid_grant", "the refresh token was already used; every token of this grant is now revoked")
	}
	g := codeGrant{ClientID: c.ID, Scope: scope, Subject: stored.Subject, FHIRUser: stored.FHIRUser, Family: stored.Family}
	if rs, _ := ParseScopes(scope); hasPatientScope(rs) || has(splitFields(scope), "launch/patient") {
		g.Patient = stored.Patient
	}
	return s.issue(ctx, c, g, false)
}

func (s *Server) tokenForBackend(ctx context.Context, form url.Values, cred ClientCredentials) (*TokenResponse, error) {
	if form.Get("client_assertion") == "" {
		return nil, oauthErr(http.StatusUnauthorized, "invalid_client", "client_credentials requires a client assertion (private_key_jwt)")
	}
	c, err := s.authenticateClient(ctx, form, cred)
	if err != nil {
		return nil, err
	}
	if c.Kind != "backend" {
		return nil, oauthErr(http.StatusBadRequest, "unauthorized_client", "client %s is not registered as a backend service", c.ID)
	}
	asked := splitFields(form.Get("scope"))
	if len(asked) == 0 {
		return nil, oauthErr(http.StatusBadRequest, "invalid_scope", "scope is required (system/ scopes)")
	}
	allowed := splitFields(c.Scopes)
	var granted []string
	for _, raw := range asked {
		sc, ok := parseScope(raw)
		if !ok || sc.Context != "system" {
			return nil, oauthErr(http.StatusBadRequest, "invalid_scope", "%q is not a system/ scope; backend services get system/ scopes only", raw)
		}
		if !allowsScope(allowed, sc) {
			return nil, oauthErr(http.StatusBadRequest, "invalid_scope", "client %s is not allowed %q", c.ID, raw)
		}
		granted = append(granted, raw)
	}
	scope := strings.Join(granted, " ")
	tok, claims, err := s.Issuer.Mint(Grant{Subject: c.ID, Scope: scope, ClientID: c.ID, TTL: BackendTokenTTL})
	if err != nil {
		return nil, err
	}
	// Recorded under the client's backend family, so removing the client revokes its live tokens at once.
	if err := s.Store.RecordIssued(ctx, claims.ID, backendFamily(c.ID), claims.ExpiresAt.Time); err != nil {
		return nil, err
	}
	return &TokenResponse{AccessToken: tok, TokenType: "Bearer", ExpiresIn: int64(BackendTokenTTL.Seconds()), Scope: scope}, nil
}

// Introspect answers RFC 7662 for an access token (a JWT this server issued) or a refresh token. The caller is an
// authenticated client or presents a valid bearer token of its own. Anything not active is {"active": false}.
func (s *Server) Introspect(ctx context.Context, form url.Values, cred ClientCredentials, callerToken string, verify func(context.Context, string) (*Principal, error)) (map[string]any, error) {
	if callerToken != "" {
		if _, err := verify(ctx, callerToken); err != nil {
			return nil, oauthErr(http.StatusUnauthorized, "invalid_token", "the bearer token of the introspection request is not valid")
		}
	} else if _, err := s.authenticateClient(ctx, form, cred); err != nil {
		return nil, err
	}
	inactive := map[string]any{"active": false}
	t := form.Get("token")
	if t == "" {
		return inactive, nil
	}
	if strings.Count(t, ".") == 2 {
		p, err := verify(ctx, t)
		if err != nil {
			return inactive, nil
		}
		out := map[string]any{"active": true, "scope": p.Scope, "client_id": p.ClientID, "sub": p.Subject,
			"exp": p.Expires.Unix(), "iss": s.BaseURL, "aud": s.FHIRBase(), "token_type": "Bearer"}
		if p.Patient != "" {
			out["patient"] = p.Patient
		}
		if p.FHIRUser != "" {
			out["fhirUser"] = p.FHIRUser
		}
		return out, nil
	}
	rt, err := s.Store.RefreshTokenByHash(ctx, hashToken(t))
	if err != nil || rt.Used != 0 || rt.Revoked != 0 || s.now().Unix() > rt.Expires {
		return inactive, nil
	}
	out := map[string]any{"active": true, "scope": rt.Scope, "client_id": rt.ClientID, "sub": rt.Subject, "exp": rt.Expires,
		"iss": s.BaseURL, "token_type": "refresh_token"}
	if rt.Patient != "" {
		out["patient"] = rt.Patient
	}
	return out, nil
}

// Revoke answers RFC 7009: an access token's id is revoked everywhere; a refresh token ends its whole grant.
// Unknown tokens are not an error.
func (s *Server) Revoke(ctx context.Context, form url.Values, cred ClientCredentials, verify func(context.Context, string) (*Principal, error)) error {
	c, err := s.authenticateClient(ctx, form, cred)
	if err != nil {
		return err
	}
	t := form.Get("token")
	if t == "" {
		return oauthErr(http.StatusBadRequest, "invalid_request", "token is required")
	}
	if strings.Count(t, ".") == 2 {
		p, err := verify(ctx, t)
		if err != nil {
			return nil
		}
		if p.ClientID != c.ID {
			return nil // RFC 7009 §2.1: another client's token is not revoked, and that is not said
		}
		return s.Revocations.Revoke(ctx, p.JTI, p.Expires)
	}
	rt, err := s.Store.RefreshTokenByHash(ctx, hashToken(t))
	if err != nil || rt.ClientID != c.ID {
		return nil
	}
	return s.revokeFamily(ctx, rt.Family)
}
