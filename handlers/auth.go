package handlers

import (
	"embed"
	"encoding/json"
	"errors"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/gin-gonic/gin"
	r4 "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

//go:embed templates/*.html
var templateFS embed.FS

var pages = template.Must(template.ParseFS(templateFS, "templates/*.html"))

const sessionCookie = "carta_auth"

// authRoutes registers the SMART authorization server and its discovery documents.
func (s *Server) authRoutes(r *gin.Engine) {
	r.GET("/fhir/.well-known/smart-configuration", s.jsonDoc(s.auth.Configuration))
	r.GET("/.well-known/smart-configuration", s.jsonDoc(s.auth.Configuration))
	r.GET("/.well-known/openid-configuration", s.jsonDoc(s.auth.OpenIDConfiguration))
	r.GET("/auth/style.json", s.jsonDoc(s.auth.Style))
	a := r.Group("/auth", noStore)
	a.GET("/authorize", s.authorize)
	a.POST("/authorize", s.authorize)
	a.GET("/login", s.loginPage)
	a.POST("/login", s.login)
	a.GET("/patient", s.patientPage)
	a.POST("/patient", s.choosePatient)
	a.GET("/consent", s.consentPage)
	a.POST("/consent", s.consent)
	a.POST("/token", s.token)
	a.POST("/introspect", s.introspect)
	a.POST("/revoke", s.revoke)
}

// security is the CapabilityStatement's rest.security: SMART on FHIR with its OAuth endpoints (the
// oauth-uris extension), or a note that tokens come from `carta token` when the authorization server is off.
func (s *Server) security() *r4.CapabilityStatementRestSecurity {
	cors := true
	sec := &r4.CapabilityStatementRestSecurity{Cors: &cors}
	smart := "SMART-on-FHIR"
	system := "http://terminology.hl7.org/CodeSystem/restful-security-service"
	sec.Service = []r4.CodeableConcept{{Coding: []r4.Coding{{System: &system, Code: &smart}}, Text: &smart}}
	if s.auth == nil {
		d := "Bearer tokens signed by this server (RS256), minted with `carta token`."
		sec.Description = &d
		return sec
	}
	uri := func(name, v string) r4.Extension { return r4.Extension{Url: name, ValueUri: &v} }
	cfg := s.auth.Configuration()
	sec.Extension = []r4.Extension{{
		Url: "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
		Extension: []r4.Extension{
			uri("authorize", cfg["authorization_endpoint"].(string)),
			uri("token", cfg["token_endpoint"].(string)),
			uri("revoke", cfg["revocation_endpoint"].(string)),
			uri("introspect", cfg["introspection_endpoint"].(string)),
		},
	}}
	d := "SMART App Launch 2.x: see " + s.base + "/.well-known/smart-configuration"
	sec.Description = &d
	return sec
}

func noStore(c *gin.Context) {
	c.Header("Cache-Control", "no-store")
	c.Header("Pragma", "no-cache")
	c.Next()
}

// jsonDoc serves a discovery document as application/json whatever the Accept header, open to any origin.
func (s *Server) jsonDoc(doc func() map[string]any) gin.HandlerFunc {
	return func(c *gin.Context) {
		b, err := json.Marshal(doc())
		if err != nil {
			s.fail(c, err)
			return
		}
		c.Header("Access-Control-Allow-Origin", "*")
		c.Data(http.StatusOK, "application/json", b)
	}
}

type page struct {
	// formTo is an origin forms on the page may end up at besides this server (the app, after consent):
	// browsers apply the form-action policy to the redirect that follows a form post.
	formTo                                                        string
	Title, Message, App, CSRF, Username, Query, Patient, FHIRBase string
	Items                                                         []auth.ConsentItem
	Other                                                         []string
	Patients                                                      []pickable
}

type pickable struct{ ID, Name, Detail string }

func (s *Server) render(c *gin.Context, status int, name string, p page) {
	p.FHIRBase = s.base
	c.Header("Content-Type", "text/html; charset=utf-8")
	c.Header("X-Frame-Options", "DENY")
	formAction := "'self'"
	if p.formTo != "" {
		formAction += " " + p.formTo
	}
	c.Header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action "+formAction+"; frame-ancestors 'none'")
	c.Status(status)
	if err := pages.ExecuteTemplate(c.Writer, name, p); err != nil {
		s.log.Error("rendering a page", "page", name, "err", err)
	}
}

func (s *Server) errorPage(c *gin.Context, status int, msg string) {
	s.render(c, status, "error.html", page{Title: "This sign-in cannot go on", Message: msg})
}

func (s *Server) setSession(c *gin.Context, id string, maxAge int) {
	http.SetCookie(c.Writer, &http.Cookie{Name: sessionCookie, Value: id, Path: "/auth", MaxAge: maxAge, HttpOnly: true,
		SameSite: http.SameSiteLaxMode, Secure: strings.HasPrefix(s.base, "https://")})
}

// session returns the sign-in session of the browser, or shows why there is none.
func (s *Server) session(c *gin.Context) *auth.Session {
	ck, _ := c.Cookie(sessionCookie)
	sess, err := s.auth.LoadSession(c.Request.Context(), ck)
	if err != nil {
		s.fail(c, err)
		return nil
	}
	if sess == nil {
		s.errorPage(c, http.StatusBadRequest, "This sign-in has expired or was already used. Go back to the application and start again.")
		return nil
	}
	return sess
}

// postSession is session for a form post: the form's CSRF token must be the session's.
func (s *Server) postSession(c *gin.Context) *auth.Session {
	sess := s.session(c)
	if sess == nil {
		return nil
	}
	if !sess.CheckCSRF(c.PostForm("csrf")) {
		s.errorPage(c, http.StatusForbidden, "This form did not come from this sign-in page. Go back to the application and start again.")
		return nil
	}
	return sess
}

func (s *Server) authorize(c *gin.Context) {
	v := c.Request.URL.Query()
	if c.Request.Method == http.MethodPost {
		if err := c.Request.ParseForm(); err != nil {
			s.errorPage(c, http.StatusBadRequest, "The authorization request could not be read.")
			return
		}
		v = c.Request.PostForm
	}
	req, err := s.auth.CheckAuthorize(c.Request.Context(), v)
	var pe *auth.PageError
	var oe *auth.OAuthError
	switch {
	case errors.As(err, &pe):
		s.errorPage(c, pe.Status, pe.Message)
		return
	case errors.As(err, &oe):
		c.Redirect(http.StatusFound, auth.ErrorRedirect(oe))
		return
	case err != nil:
		s.fail(c, err)
		return
	}
	sess, err := s.auth.StartSession(c.Request.Context(), req)
	if err != nil {
		s.fail(c, err)
		return
	}
	s.setSession(c, sess.ID, int(auth.SessionTTL.Seconds()))
	c.Redirect(http.StatusFound, "login")
}

func (s *Server) loginPage(c *gin.Context) {
	if sess := s.session(c); sess != nil {
		s.render(c, http.StatusOK, "login.html", page{Title: "Sign in", App: sess.Req.ClientName, CSRF: sess.CSRF})
	}
}

func clientAddr(c *gin.Context) string {
	host, _, err := net.SplitHostPort(c.Request.RemoteAddr)
	if err != nil {
		return c.Request.RemoteAddr
	}
	return host
}

func (s *Server) login(c *gin.Context) {
	sess := s.postSession(c)
	if sess == nil {
		return
	}
	user := c.PostForm("username")
	err := s.auth.Login(c.Request.Context(), sess, user, c.PostForm("password"), clientAddr(c))
	var le *auth.LoginError
	if errors.As(err, &le) {
		status := http.StatusUnauthorized
		if strings.Contains(le.Message, "Too many") {
			status = http.StatusTooManyRequests
		}
		s.render(c, status, "login.html", page{Title: "Sign in", App: sess.Req.ClientName, CSRF: sess.CSRF, Username: user, Message: le.Message})
		return
	}
	if err != nil {
		s.fail(c, err)
		return
	}
	if s.auth.NeedsPatient(sess) {
		c.Redirect(http.StatusSeeOther, "patient")
		return
	}
	c.Redirect(http.StatusSeeOther, "consent")
}

func (s *Server) patientPage(c *gin.Context) {
	sess := s.session(c)
	if sess == nil {
		return
	}
	if sess.Username == "" {
		c.Redirect(http.StatusSeeOther, "login")
		return
	}
	p := page{Title: "Choose a patient", App: sess.Req.ClientName, CSRF: sess.CSRF, Query: c.Query("q")}
	if p.Query != "" {
		q, err := fhir.ParseQuery("Patient", url.Values{"name": {p.Query}, "_count": {"20"}}, fhir.QueryOptions{Base: s.base})
		if err != nil {
			p.Message = "Search by name, for example a family name."
		} else if res, err := s.store.Search(c.Request.Context(), q, nil); err != nil {
			s.fail(c, err)
			return
		} else {
			for _, m := range res.Matches {
				p.Patients = append(p.Patients, describePatient(m.ID, m.Raw))
			}
		}
	}
	s.render(c, http.StatusOK, "patient.html", p)
}

// origin is the scheme://host[:port] of a URL as a Content-Security-Policy source; for a native app's
// private-use scheme (com.example.app:/callback) it is the scheme source "com.example.app:".
func origin(u string) string {
	p, err := url.Parse(u)
	switch {
	case err != nil || p.Scheme == "":
		return ""
	case p.Host == "":
		return p.Scheme + ":"
	}
	return p.Scheme + "://" + p.Host
}

// describePatient makes a picker line: name, birth date and id.
func describePatient(id string, raw []byte) pickable {
	var p struct {
		Name []struct {
			Text   string   `json:"text"`
			Family string   `json:"family"`
			Given  []string `json:"given"`
		} `json:"name"`
		BirthDate string `json:"birthDate"`
	}
	json.Unmarshal(raw, &p)
	name := id
	if len(p.Name) > 0 {
		n := p.Name[0]
		if n.Text != "" {
			name = n.Text
		} else {
			name = strings.TrimSpace(strings.Join(n.Given, " ") + " " + n.Family)
		}
	}
	detail := "id " + id
	if p.BirthDate != "" {
		detail = "born " + p.BirthDate + ", " + detail
	}
	return pickable{ID: id, Name: name, Detail: detail}
}

func (s *Server) choosePatient(c *gin.Context) {
	sess := s.postSession(c)
	if sess == nil {
		return
	}
	err := s.auth.ChoosePatient(c.Request.Context(), sess, c.PostForm("patient"))
	var le *auth.LoginError
	if errors.As(err, &le) {
		s.render(c, http.StatusBadRequest, "patient.html", page{Title: "Choose a patient", App: sess.Req.ClientName, CSRF: sess.CSRF, Message: le.Message})
		return
	}
	if err != nil {
		s.fail(c, err)
		return
	}
	c.Redirect(http.StatusSeeOther, "consent")
}

func (s *Server) consentPage(c *gin.Context) {
	sess := s.session(c)
	if sess == nil {
		return
	}
	if sess.Username == "" {
		c.Redirect(http.StatusSeeOther, "login")
		return
	}
	if s.auth.NeedsPatient(sess) {
		c.Redirect(http.StatusSeeOther, "patient")
		return
	}
	items, other, err := s.auth.Consent(c.Request.Context(), sess)
	if err != nil {
		s.fail(c, err)
		return
	}
	p := page{Title: "Allow access?", App: sess.Req.ClientName, CSRF: sess.CSRF, Items: items, Other: other, formTo: origin(sess.Req.RedirectURI)}
	if sess.Patient != "" && !strings.HasPrefix(sess.FHIRUser, "Patient/") {
		p.Patient = "Patient/" + sess.Patient
	}
	s.render(c, http.StatusOK, "consent.html", p)
}

func (s *Server) consent(c *gin.Context) {
	sess := s.postSession(c)
	if sess == nil {
		return
	}
	if c.PostForm("action") != "approve" {
		c.Redirect(http.StatusSeeOther, s.auth.Deny(c.Request.Context(), sess))
		return
	}
	to, err := s.auth.Approve(c.Request.Context(), sess, c.PostFormArray("keep"))
	var le *auth.LoginError
	if errors.As(err, &le) {
		c.Redirect(http.StatusSeeOther, "login")
		return
	}
	if err != nil {
		s.fail(c, err)
		return
	}
	s.setSession(c, "", -1)
	c.Redirect(http.StatusSeeOther, to)
}

// oauthForm reads an OAuth request body (application/x-www-form-urlencoded) and the client's Basic credentials.
func oauthForm(c *gin.Context) (url.Values, auth.ClientCredentials, *auth.OAuthError) {
	var cred auth.ClientCredentials
	if ct := c.GetHeader("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		return nil, cred, &auth.OAuthError{Status: http.StatusBadRequest, Code: "invalid_request", Description: "the body must be application/x-www-form-urlencoded"}
	}
	if err := c.Request.ParseForm(); err != nil {
		return nil, cred, &auth.OAuthError{Status: http.StatusBadRequest, Code: "invalid_request", Description: "the form could not be read"}
	}
	cred.BasicUser, cred.BasicPassword, cred.HasBasic = c.Request.BasicAuth()
	return c.Request.PostForm, cred, nil
}

func (s *Server) oauthError(c *gin.Context, err error) {
	var oe *auth.OAuthError
	if !errors.As(err, &oe) {
		s.log.Error("authorization server error", "id", c.GetString(keyRequestID), "err", err)
		oe = &auth.OAuthError{Status: http.StatusInternalServerError, Code: "server_error", Description: "internal error; the server logged the details"}
	}
	if oe.Basic {
		c.Header("WWW-Authenticate", `Basic realm="carta"`)
	}
	b, _ := json.Marshal(map[string]string{"error": oe.Code, "error_description": oe.Description})
	c.Data(oe.Status, "application/json", b)
}

func (s *Server) token(c *gin.Context) {
	form, cred, oe := oauthForm(c)
	if oe != nil {
		s.oauthError(c, oe)
		return
	}
	resp, err := s.auth.Token(c.Request.Context(), form, cred)
	if err != nil {
		s.oauthError(c, err)
		return
	}
	b, err := json.Marshal(resp)
	if err != nil {
		s.oauthError(c, err)
		return
	}
	c.Data(http.StatusOK, "application/json", b)
}

func bearer(c *gin.Context) string {
	h := c.GetHeader("Authorization")
	if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(tok)
	}
	return ""
}

func (s *Server) introspect(c *gin.Context) {
	form, cred, oe := oauthForm(c)
	if oe != nil {
		s.oauthError(c, oe)
		return
	}
	out, err := s.auth.Introspect(c.Request.Context(), form, cred, bearer(c), s.verifier.Verify)
	if err != nil {
		s.oauthError(c, err)
		return
	}
	b, _ := json.Marshal(out)
	c.Data(http.StatusOK, "application/json", b)
}

func (s *Server) revoke(c *gin.Context) {
	form, cred, oe := oauthForm(c)
	if oe != nil {
		s.oauthError(c, oe)
		return
	}
	if err := s.auth.Revoke(c.Request.Context(), form, cred, s.verifier.Verify); err != nil {
		s.oauthError(c, err)
		return
	}
	c.Status(http.StatusOK)
}
