package auth

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/store"
)

// AuthRequest is a checked authorization request.
type AuthRequest struct {
	ClientID      string `json:"client_id"`
	ClientName    string `json:"client_name"`
	RedirectURI   string `json:"redirect_uri"`
	Scope         string `json:"scope"`
	State         string `json:"state"`
	CodeChallenge string `json:"code_challenge"`
	Nonce         string `json:"nonce,omitempty"`
	// Launch context (EHR launch).
	Launch        string `json:"launch,omitempty"`
	LaunchPatient string `json:"launch_patient,omitempty"`
	LaunchUser    string `json:"launch_user,omitempty"`
	Encounter     string `json:"encounter,omitempty"`
}

// CheckAuthorize validates an authorization request. A problem the client must not learn by redirect (unknown
// client, unregistered redirect URI) is a *PageError for the person in the browser; any other problem is an
// *OAuthError that carries the redirect URI and state to send it back with.
func (s *Server) CheckAuthorize(ctx context.Context, v url.Values) (*AuthRequest, error) {
	clientID := v.Get("client_id")
	if clientID == "" {
		return nil, &PageError{Status: http.StatusBadRequest, Message: "The application did not say who it is (client_id is missing)."}
	}
	c, err := s.Store.Client(ctx, clientID)
	if errors.Is(err, store.ErrNotFound) || (c != nil && c.Disabled != 0) {
		return nil, &PageError{Status: http.StatusBadRequest, Message: fmt.Sprintf("The application %q is not registered with this server.", clientID)}
	}
	if err != nil {
		return nil, err
	}
	redirect := v.Get("redirect_uri")
	uris := splitFields(c.RedirectURIs)
	if redirect == "" && len(uris) == 1 {
		redirect = uris[0]
	}
	if !has(uris, redirect) {
		return nil, &PageError{Status: http.StatusBadRequest, Message: fmt.Sprintf("The application asked to return to %q, which is not one of its registered addresses. Nothing was sent to it.", redirect)}
	}
	fail := func(code, format string, args ...any) (*AuthRequest, error) {
		e := oauthErr(http.StatusFound, code, format, args...)
		e.RedirectURI, e.State = redirect, v.Get("state")
		return nil, e
	}
	if c.Kind == "backend" {
		return fail("unauthorized_client", "client %s is a backend service; it uses client_credentials, not authorize", clientID)
	}
	if rt := v.Get("response_type"); rt != "code" {
		return fail("unsupported_response_type", "response_type must be code, got %q", rt)
	}
	if aud := strings.TrimSuffix(v.Get("aud"), "/"); aud != s.FHIRBase() {
		return fail("invalid_request", "aud must be this server's FHIR base %s, got %q", s.FHIRBase(), v.Get("aud"))
	}
	challenge, method := v.Get("code_challenge"), v.Get("code_challenge_method")
	switch {
	case challenge == "" && method == "":
		return fail("invalid_request", "PKCE is required: send code_challenge and code_challenge_method=S256")
	case method != "S256":
		return fail("invalid_request", "code_challenge_method must be S256 (plain is not allowed), got %q", method)
	case len(challenge) < 43 || len(challenge) > 128:
		return fail("invalid_request", "code_challenge must be the base64url SHA-256 of a code verifier (43 characters)")
	}
	scope := strings.Join(splitFields(v.Get("scope")), " ")
	if scope == "" {
		return fail("invalid_scope", "scope is required")
	}
	req := &AuthRequest{ClientID: clientID, ClientName: c.Name, RedirectURI: redirect, Scope: scope, State: v.Get("state"),
		CodeChallenge: challenge, Nonce: v.Get("nonce")}
	if req.ClientName == "" {
		req.ClientName = clientID
	}
	if launch := v.Get("launch"); launch != "" {
		l, err := s.Store.Launch(ctx, launch)
		if errors.Is(err, store.ErrNotFound) {
			return fail("invalid_request", "launch %q is unknown or has expired", launch)
		}
		if err != nil {
			return nil, err
		}
		if l.ClientID != clientID {
			return fail("invalid_request", "launch %q was made for another application", launch)
		}
		req.Launch, req.LaunchPatient, req.LaunchUser, req.Encounter = launch, l.Patient, l.FHIRUser, l.Encounter
	}
	return req, nil
}

// Session is one person's way through login and consent for one authorization request.
type Session struct {
	ID   string      `json:"id"`
	CSRF string      `json:"csrf"`
	Req  AuthRequest `json:"req"`
	// After login:
	Username string `json:"username,omitempty"`
	FHIRUser string `json:"fhir_user,omitempty"`
	Patient  string `json:"patient,omitempty"`
	AuthTime int64  `json:"auth_time,omitempty"`
}

// StartSession begins the login for a checked request.
func (s *Server) StartSession(ctx context.Context, req *AuthRequest) (*Session, error) {
	sess := &Session{ID: randomToken(24), CSRF: randomToken(24), Req: *req}
	return sess, s.SaveSession(ctx, sess)
}

// SaveSession stores a session.
func (s *Server) SaveSession(ctx context.Context, sess *Session) error {
	b, err := json.Marshal(sess)
	if err != nil {
		return err
	}
	return s.State.Put(ctx, "session:"+sess.ID, b, SessionTTL)
}

// LoadSession returns a session, or nil when it is unknown or expired.
func (s *Server) LoadSession(ctx context.Context, id string) (*Session, error) {
	if id == "" {
		return nil, nil
	}
	b, ok, err := s.State.Get(ctx, "session:"+id)
	if err != nil || !ok {
		return nil, err
	}
	var sess Session
	if err := json.Unmarshal(b, &sess); err != nil {
		return nil, err
	}
	return &sess, nil
}

// EndSession forgets a session.
func (s *Server) EndSession(ctx context.Context, sess *Session) error {
	return s.State.Del(ctx, "session:"+sess.ID)
}

// CheckCSRF compares a form's token with the session's, in constant time.
func (sess *Session) CheckCSRF(token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(sess.CSRF)) == 1
}

// LoginError is a failed login, with a message for the person.
type LoginError struct{ Message string }

func (e *LoginError) Error() string { return e.Message }

// Login checks a username and password for the session. Failures are counted per account and per address; past
// the limits, logins are refused for the rest of the window whatever the password.
func (s *Server) Login(ctx context.Context, sess *Session, username, password, addr string) error {
	username = strings.TrimSpace(username)
	userKey, addrKey := "login:user:"+strings.ToLower(username), "login:addr:"+addr
	if n, _, err := s.counter(ctx, userKey); err != nil {
		return err
	} else if n >= MaxLoginFailures {
		return &LoginError{Message: "Too many failed sign-in attempts for this account. Try again in 15 minutes."}
	}
	if n, _, err := s.counter(ctx, addrKey); err != nil {
		return err
	} else if n >= MaxAddrFailures {
		return &LoginError{Message: "Too many failed sign-in attempts from this address. Try again in 15 minutes."}
	}
	u, err := s.Store.User(ctx, username)
	ok := false
	switch {
	case errors.Is(err, store.ErrNotFound):
		CheckSecret(password, dummyHash) // same time as a real check
	case err != nil:
		return err
	default:
		ok = u.Disabled == 0 && CheckSecret(password, u.PasswordHash)
	}
	if !ok {
		if _, err := s.State.Incr(ctx, userKey, LoginWindow); err != nil {
			return err
		}
		if _, err := s.State.Incr(ctx, addrKey, LoginWindow); err != nil {
			return err
		}
		return &LoginError{Message: "The username or password is not right."}
	}
	s.State.Del(ctx, userKey)
	sess.Username, sess.FHIRUser, sess.AuthTime = u.Username, u.FHIRUser, s.now().Unix()
	switch typ, id, _, _ := fhir.SplitReference(u.FHIRUser); typ {
	case "Patient":
		sess.Patient = id
	case "RelatedPerson":
		p, err := s.relatedPatient(ctx, id)
		if err != nil {
			return err
		}
		sess.Patient = p
	case "Practitioner":
		sess.Patient = sess.Req.LaunchPatient
	}
	return s.SaveSession(ctx, sess)
}

func (s *Server) counter(ctx context.Context, key string) (int64, bool, error) {
	b, ok, err := s.State.Get(ctx, key)
	if err != nil || !ok {
		return 0, ok, err
	}
	var n int64
	fmt.Sscan(string(b), &n)
	return n, true, nil
}

// relatedPatient returns the Patient a RelatedPerson acts for.
func (s *Server) relatedPatient(ctx context.Context, id string) (string, error) {
	st, err := s.Store.Read(ctx, "RelatedPerson", id, nil)
	if err != nil {
		return "", &LoginError{Message: "Your account is linked to a representative record that cannot be found; ask the records office."}
	}
	o, err := fhir.ParseResource(st.Raw, "RelatedPerson")
	if err != nil {
		return "", err
	}
	typ, pid, _, ok := fhir.SplitReference(o.Object("patient").String("reference"))
	if !ok || typ != "Patient" {
		return "", &LoginError{Message: "Your representative record does not name a patient here; ask the records office."}
	}
	return pid, nil
}

// NeedsPatient reports whether the person must choose a patient before consenting: a practitioner asking for
// patient context (launch/patient or patient/ scopes) without one from an EHR launch.
func (s *Server) NeedsPatient(sess *Session) bool {
	if sess.Patient != "" || !strings.HasPrefix(sess.FHIRUser, "Practitioner/") {
		return false
	}
	scopes := splitFields(sess.Req.Scope)
	if has(scopes, "launch/patient") {
		return true
	}
	rs, _ := ParseScopes(sess.Req.Scope)
	for _, r := range rs {
		if r.Context == "patient" {
			return true
		}
	}
	return false
}

// ChoosePatient sets the patient a practitioner picked.
func (s *Server) ChoosePatient(ctx context.Context, sess *Session, patientID string) error {
	if !strings.HasPrefix(sess.FHIRUser, "Practitioner/") || !fhir.ValidID(patientID) {
		return &LoginError{Message: "Choose a patient from the list."}
	}
	if _, err := s.Store.Read(ctx, "Patient", patientID, nil); err != nil {
		return &LoginError{Message: "That patient is not known here."}
	}
	sess.Patient = patientID
	return s.SaveSession(ctx, sess)
}

// ConsentItem is one line of the consent page: access to one resource type (or everything) in one context.
type ConsentItem struct {
	Key   string // what the form sends back: "patient/Observation"
	Label string // "Observations"
	What  string // "read and search", "create and change", ...
}

// Consent lists what the application asks for and may get: resource access the person can untick, and the
// other permissions it asked for, in plain words.
func (s *Server) Consent(ctx context.Context, sess *Session) (items []ConsentItem, other []string, err error) {
	granted, err := s.grantable(ctx, sess)
	if err != nil {
		return nil, nil, err
	}
	rs, nonResource := ParseScopes(strings.Join(granted, " "))
	seen := map[string]int{}
	for _, r := range rs {
		key := r.Context + "/" + r.Type
		what := permWords(r.Perms)
		if r.Query != nil {
			what += " (only " + r.Query.Encode() + ")"
		}
		if i, ok := seen[key]; ok {
			if !strings.Contains(items[i].What, what) {
				items[i].What += "; " + what
			}
			continue
		}
		label := r.Type
		if r.Type == "*" {
			label = "Everything in the record"
			if r.Context == "user" {
				label = "Everything you can see as " + sess.FHIRUser
			}
		}
		seen[key] = len(items)
		items = append(items, ConsentItem{Key: key, Label: label, What: what})
	}
	for _, sc := range nonResource {
		if d, ok := scopeWords[sc]; ok {
			other = append(other, d)
		}
	}
	return items, other, nil
}

var scopeWords = map[string]string{
	"openid":         "Know who you are (your name and record link)",
	"fhirUser":       "Know which record is yours",
	"offline_access": "Keep access after you close the app, until you revoke it (up to 90 days without use)",
	"online_access":  "Keep access while you use the app today",
	"launch/patient": "Be told which patient record it is working with",
	"launch":         "Open from within the clinic's system with its context",
}

func permWords(p string) string {
	var w []string
	if strings.Contains(p, "r") || strings.Contains(p, "s") {
		w = append(w, "read")
	}
	if strings.Contains(p, "c") {
		w = append(w, "add")
	}
	if strings.Contains(p, "u") {
		w = append(w, "change")
	}
	if strings.Contains(p, "d") {
		w = append(w, "delete")
	}
	return strings.Join(w, ", ")
}

// grantable is the part of the requested scopes this person may give this client, in the order asked: system/
// scopes never; user/ scopes only to practitioners; patient/ scopes only with a patient in context; within what
// the client is registered for.
func (s *Server) grantable(ctx context.Context, sess *Session) ([]string, error) {
	c, err := s.Store.Client(ctx, sess.Req.ClientID)
	if err != nil {
		return nil, err
	}
	allowed := splitFields(c.Scopes)
	isPractitioner := strings.HasPrefix(sess.FHIRUser, "Practitioner/")
	var out []string
	for _, raw := range splitFields(sess.Req.Scope) {
		sc, ok := parseScope(raw)
		if ok {
			switch sc.Context {
			case "system":
				continue
			case "user":
				if !isPractitioner {
					continue
				}
			case "patient":
				if sess.Patient == "" {
					continue
				}
			}
			if len(allowed) > 0 && !allowsScope(allowed, sc) {
				continue
			}
		} else {
			switch raw {
			case "openid", "fhirUser", "offline_access", "online_access":
			case "launch":
				if sess.Req.Launch == "" {
					continue
				}
			case "launch/patient":
				if sess.Patient == "" {
					continue
				}
			default:
				continue // unknown scopes are not granted
			}
			if len(allowed) > 0 && !has(allowed, raw) && raw != "openid" && raw != "fhirUser" && raw != "launch" && raw != "launch/patient" {
				continue
			}
		}
		if !has(out, raw) {
			out = append(out, raw)
		}
	}
	return out, nil
}

// allowsScope reports whether a client registered for allowed may be granted sc: an allowed scope of the same
// context covers its type (or all types) and at least its permissions, without a narrower restriction.
func allowsScope(allowed []string, sc Scope) bool {
	for _, a := range allowed {
		as, ok := parseScope(a)
		if !ok || as.Context != sc.Context || (as.Type != "*" && as.Type != sc.Type) {
			continue
		}
		if as.Query != nil && (sc.Query == nil || as.Query.Encode() != sc.Query.Encode()) {
			continue
		}
		covered := true
		for i := 0; i < len(sc.Perms); i++ {
			if !as.Has(sc.Perms[i]) {
				covered = false
			}
		}
		if covered {
			return true
		}
	}
	return false
}

// codeGrant is what an authorization code stands for.
type codeGrant struct {
	ClientID    string `json:"client_id"`
	RedirectURI string `json:"redirect_uri"`
	Challenge   string `json:"challenge"`
	Scope       string `json:"scope"`
	Subject     string `json:"sub"`
	FHIRUser    string `json:"fhir_user"`
	Patient     string `json:"patient,omitempty"`
	Encounter   string `json:"encounter,omitempty"`
	Nonce       string `json:"nonce,omitempty"`
	AuthTime    int64  `json:"auth_time"`
	EHR         bool   `json:"ehr"`
	Family      string `json:"family"`
}

// Approve grants the requested access minus the resource types the person unticked (keep lists what stays
// ticked), issues a one-time code and returns the client's redirect URL.
func (s *Server) Approve(ctx context.Context, sess *Session, keep []string) (string, error) {
	if sess.Username == "" {
		return "", &LoginError{Message: "Sign in first."}
	}
	granted, err := s.grantable(ctx, sess)
	if err != nil {
		return "", err
	}
	var scopes []string
	for _, raw := range granted {
		if sc, ok := parseScope(raw); ok && !has(keep, sc.Context+"/"+sc.Type) {
			continue
		}
		scopes = append(scopes, raw)
	}
	g := codeGrant{ClientID: sess.Req.ClientID, RedirectURI: sess.Req.RedirectURI, Challenge: sess.Req.CodeChallenge,
		Scope: strings.Join(scopes, " "), Subject: sess.Username, FHIRUser: sess.FHIRUser, Encounter: sess.Req.Encounter,
		Nonce: sess.Req.Nonce, AuthTime: sess.AuthTime, EHR: sess.Req.Launch != "", Family: randomToken(16)}
	if rs, _ := ParseScopes(g.Scope); hasPatientScope(rs) || has(scopes, "launch/patient") || (g.EHR && sess.Patient != "") {
		g.Patient = sess.Patient
	}
	b, err := json.Marshal(g)
	if err != nil {
		return "", err
	}
	code := randomToken(32)
	if err := s.State.Put(ctx, "code:"+code, b, CodeTTL); err != nil {
		return "", err
	}
	if err := s.EndSession(ctx, sess); err != nil {
		return "", err
	}
	return redirectWith(sess.Req.RedirectURI, url.Values{"code": {code}, "state": {sess.Req.State}}), nil
}

func hasPatientScope(rs []Scope) bool {
	for _, r := range rs {
		if r.Context == "patient" {
			return true
		}
	}
	return false
}

// Deny ends the session and returns the redirect that tells the client access was refused.
func (s *Server) Deny(ctx context.Context, sess *Session) string {
	s.EndSession(ctx, sess)
	return redirectWith(sess.Req.RedirectURI, url.Values{"error": {"access_denied"}, "error_description": {"the person declined"}, "state": {sess.Req.State}})
}

// ErrorRedirect is the redirect that returns an authorize error to the client (RFC 6749 §4.1.2.1).
func ErrorRedirect(e *OAuthError) string {
	v := url.Values{"error": {e.Code}, "error_description": {e.Description}}
	if e.State != "" {
		v.Set("state", e.State)
	}
	return redirectWith(e.RedirectURI, v)
}

// redirectWith adds query parameters to a redirect URI, keeping any it already has; empty values are left out.
func redirectWith(uri string, add url.Values) string {
	u, err := url.Parse(uri)
	if err != nil {
		return uri
	}
	q := u.Query()
	keys := make([]string, 0, len(add))
	for k := range add {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if v := add.Get(k); v != "" {
			q.Set(k, v)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}
