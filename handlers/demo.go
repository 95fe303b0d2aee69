package handlers

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"

	"github.com/carta-fhir/carta/auth"
	"github.com/gin-gonic/gin"
	"github.com/golang-jwt/jwt/v5"
)

// DemoClientID is the public client `carta serve --demo` registers for the demo app at /demo, with the redirect
// URI DemoRedirect(baseURL).
const DemoClientID = "carta-demo"

// DemoScope is what the demo app asks for: the patient's records to read, who signed in, and a refresh token.
const DemoScope = "launch/patient openid fhirUser offline_access patient/*.rs"

// DemoRedirect is the demo app's redirect URI on a server whose public URL is baseURL.
func DemoRedirect(baseURL string) string { return strings.TrimSuffix(baseURL, "/") + "/demo/callback" }

const demoCookie = "carta_demo"

// demoRoutes serve a small SMART app, the way an app developer would write one against Carta: a start page, a
// standalone launch with PKCE, and a callback that redeems the code at the token endpoint's logic and reads the
// patient with the token it got. Only with `carta serve --demo`.
func (s *Server) demoRoutes(r *gin.Engine) {
	g := r.Group("/demo", noStore)
	g.GET("", s.demoStart)
	g.GET("/launch", s.demoLaunch)
	g.GET("/callback", s.demoCallback)
}

type demoPage struct {
	page
	Root, Scope, Token, RefreshToken, Granted, PatientID, PatientName, FHIRUser, ReadStatus string
	Curl                                                                                    []string
	ExpiresIn                                                                               int64
}

func (s *Server) renderDemo(c *gin.Context, status int, p demoPage) {
	p.FHIRBase, p.Root = s.base, s.root()
	c.Header("Content-Type", "text/html; charset=utf-8")
	c.Header("X-Frame-Options", "DENY")
	c.Header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	c.Status(status)
	if err := pages.ExecuteTemplate(c.Writer, "demo.html", p); err != nil {
		s.log.Error("rendering the demo page", "err", err)
	}
}

func (s *Server) demoStart(c *gin.Context) {
	s.renderDemo(c, http.StatusOK, demoPage{page: page{Title: "Carta demo app"}, Scope: DemoScope})
}

// demoLaunch starts a launch: standalone, or an EHR launch when called with iss and launch (the URL `carta
// launch` prints). A fresh state and PKCE verifier go in an HttpOnly cookie, then off to the authorization
// endpoint.
func (s *Server) demoLaunch(c *gin.Context) {
	scope, launch := DemoScope, c.Query("launch")
	if launch != "" {
		if iss := c.Query("iss"); iss != s.base {
			// An app must only send its user to the server it was launched for and trusts.
			s.renderDemo(c, http.StatusBadRequest, demoPage{page: page{Title: "Carta demo app", Message: "This launch names another server (iss=" + iss + "); the demo app only connects to " + s.base + "."}, Scope: DemoScope})
			return
		}
		scope = strings.Replace(DemoScope, "launch/patient", "launch", 1)
	}
	state, verifier := demoRandom(), demoRandom()
	sum := sha256.Sum256([]byte(verifier))
	http.SetCookie(c.Writer, &http.Cookie{Name: demoCookie, Value: state + "." + verifier, Path: "/demo", MaxAge: 600, HttpOnly: true,
		SameSite: http.SameSiteLaxMode, Secure: strings.HasPrefix(s.base, "https://")})
	q := url.Values{
		"response_type": {"code"}, "client_id": {DemoClientID}, "redirect_uri": {DemoRedirect(s.root())},
		"scope": {scope}, "state": {state}, "aud": {s.base},
		"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"},
	}
	if launch != "" {
		q.Set("launch", launch)
	}
	c.Redirect(http.StatusFound, s.auth.Configuration()["authorization_endpoint"].(string)+"?"+q.Encode())
}

// demoCallback checks the state, redeems the code with the verifier, and reads the patient with the new token
// through the same handler every client uses.
func (s *Server) demoCallback(c *gin.Context) {
	fail := func(status int, msg string) {
		s.renderDemo(c, status, demoPage{page: page{Title: "Carta demo app", Message: msg}, Scope: DemoScope})
	}
	ck, _ := c.Cookie(demoCookie)
	state, verifier, _ := strings.Cut(ck, ".")
	got := c.Query("state")
	if state == "" || subtle.ConstantTimeCompare([]byte(state), []byte(got)) != 1 {
		fail(http.StatusBadRequest, "This answer does not belong to a launch started here (state does not match). Start again.")
		return
	}
	http.SetCookie(c.Writer, &http.Cookie{Name: demoCookie, Value: "", Path: "/demo", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	if e := c.Query("error"); e != "" {
		fail(http.StatusOK, "The authorization server answered "+e+": "+c.Query("error_description"))
		return
	}
	form := url.Values{"grant_type": {"authorization_code"}, "code": {c.Query("code")}, "code_verifier": {verifier},
		"redirect_uri": {DemoRedirect(s.root())}, "client_id": {DemoClientID}}
	tok, err := s.auth.Token(c.Request.Context(), form, auth.ClientCredentials{})
	if err != nil {
		fail(http.StatusOK, "The token request failed: "+err.Error())
		return
	}
	p := demoPage{page: page{Title: "Connected"}, Scope: DemoScope, Token: tok.AccessToken, RefreshToken: tok.RefreshToken,
		Granted: tok.Scope, PatientID: tok.Patient, ExpiresIn: tok.ExpiresIn}
	if tok.IDToken != "" {
		if cl, err := idTokenUser(tok.IDToken); err == nil {
			p.FHIRUser = cl
		}
	}
	if tok.Patient != "" {
		rec := httptest.NewRecorder()
		req := httptest.NewRequestWithContext(c.Request.Context(), http.MethodGet, s.base+"/Patient/"+url.PathEscape(tok.Patient), nil)
		req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
		s.self.ServeHTTP(rec, req)
		p.ReadStatus = http.StatusText(rec.Code)
		var pt struct {
			Name []struct {
				Text   string   `json:"text"`
				Family string   `json:"family"`
				Given  []string `json:"given"`
			} `json:"name"`
		}
		if rec.Code == http.StatusOK && json.Unmarshal(rec.Body.Bytes(), &pt) == nil && len(pt.Name) > 0 {
			n := pt.Name[0]
			p.PatientName = n.Text
			if p.PatientName == "" {
				p.PatientName = strings.TrimSpace(strings.Join(n.Given, " ") + " " + n.Family)
			}
		}
		p.Curl = []string{
			"curl -H 'Authorization: Bearer " + tok.AccessToken + "' " + s.base + "/Patient/" + tok.Patient,
			"curl -H 'Authorization: Bearer " + tok.AccessToken + "' '" + s.base + "/DocumentReference?patient=" + tok.Patient + "'",
			"curl -H 'Authorization: Bearer " + tok.AccessToken + "' '" + s.base + "/Observation?patient=" + tok.Patient + "&_sort=-date'",
		}
	}
	s.renderDemo(c, http.StatusOK, p)
}

// idTokenUser returns the fhirUser claim of the ID token just issued in process (an app receiving it over the
// network would verify it against the JWKS first).
func idTokenUser(raw string) (string, error) {
	var cl struct {
		jwt.RegisteredClaims
		FHIRUser string `json:"fhirUser"`
	}
	if _, _, err := jwt.NewParser().ParseUnverified(raw, &cl); err != nil {
		return "", err
	}
	return cl.FHIRUser, nil
}

// root is the server's public URL (the FHIR base without /fhir).
func (s *Server) root() string { return strings.TrimSuffix(s.base, "/fhir") }

func demoRandom() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
