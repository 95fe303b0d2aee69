// Package handlers is Carta's HTTP layer: the FHIR REST API, health checks and key publication. It is the only
// package that knows gin. Every error leaves through one function (fail) as an OperationOutcome.
package handlers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/fhir/rights"
	"github.com/carta-fhir/carta/store"
	"github.com/gin-gonic/gin"
)

// DefaultMaxBody is the default request body limit.
const DefaultMaxBody = 16 << 20

// Config wires the HTTP layer to the rest of the server.
type Config struct {
	Store    *store.Store
	Verifier *auth.Verifier
	Keys     *auth.Keys
	// Auth, when set, is the SMART authorization server served under /auth (with its discovery documents).
	Auth *auth.Server
	// BaseURL is the server's public URL without a trailing slash; the FHIR base is BaseURL + "/fhir".
	BaseURL string
	Logger  *slog.Logger
	// MaxBody bounds request bodies (default DefaultMaxBody); larger ones get 413.
	MaxBody int64
	// Loc is the zone for dates written without one in searches.
	Loc     *time.Location
	Version string
	// Demo serves the demo SMART app at /demo (needs Auth; `carta serve --demo` registers its client).
	Demo bool
	// Rights are the patient-rights rules (deadlines, contacts, jurisdiction profiles); nil: HIPAA defaults.
	Rights *rights.Rules
}

// Server holds what the handlers need.
type Server struct {
	store    *store.Store
	verifier *auth.Verifier
	keys     *auth.Keys
	auth     *auth.Server
	base     string // FHIR base URL
	log      *slog.Logger
	maxBody  int64
	loc      *time.Location
	version  string

	capability     []byte
	capabilityETag string
	demo           bool
	self           http.Handler // the whole handler, for the demo app's own requests
	rights         *rights.Rules
	disputes       disputeIndex
	metricsOnce    sync.Once
	metricsHandler http.Handler
	auditLog       *auditLog
	requests       atomic.Int64 // requests served, for the audit converter's sense of load
}

// ServeHTTP serves the whole API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	s.self.ServeHTTP(w, r)
}

// New builds the HTTP handler.
func New(cfg Config) (*Server, error) {
	s := &Server{
		store: cfg.Store, verifier: cfg.Verifier, keys: cfg.Keys, auth: cfg.Auth, base: strings.TrimSuffix(cfg.BaseURL, "/") + "/fhir",
		log: cfg.Logger, maxBody: cfg.MaxBody, loc: cfg.Loc, version: cfg.Version, demo: cfg.Demo && cfg.Auth != nil,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBody
	}
	if s.loc == nil {
		s.loc = time.UTC
	}
	s.rights = cfg.Rights
	if s.rights == nil {
		s.rights = rights.New(rights.Config{Loc: s.loc})
	}
	if s.store != nil {
		// The rights rules see every write of these types, by any path.
		for _, typ := range []string{"Task", "Communication", "DocumentReference"} {
			s.store.SetHook(typ, rightsHook{s})
		}
		s.store.SetAuditor(s.auditChange)
		s.auditLog = newAuditLog(s)
	}
	capb, err := fhir.CapabilityStatement(fhir.Capabilities{
		Base: s.base, Software: "Carta", Version: cfg.Version, Date: time.Now(),
		Description: "FHIR R4 server for patient access and patient rights (45 CFR 164.524, 164.526)",
		Security:    s.security(),
		Profiles: map[string][]string{
			"Task":          {rights.ProfileAccessRequest, rights.ProfileDenialReview, rights.ProfileAccountingReq, rights.ProfileCorrectionTask},
			"Communication": {rights.ProfileCorrectionComm},
			"Bundle":        {rights.ProfileCorrectionBndl},
		},
		Operations: rightsOperations(),
	})
	if err != nil {
		return nil, fmt.Errorf("handlers: building the CapabilityStatement: %w", err)
	}
	s.capability = capb
	sum := sha256.Sum256(capb)
	s.capabilityETag = `W/"` + hex.EncodeToString(sum[:8]) + `"`
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.RedirectTrailingSlash = false
	r.RedirectFixedPath = false
	r.ContextWithFallback = true
	r.Use(s.requestID, s.accessLog, s.recover)
	s.routes(r)
	s.self = s.outer(r)
	return s, nil
}

// outer handles what must happen before routing: CORS preflight and a trailing slash (FHIR treats [base]/Patient/
// like [base]/Patient; redirecting would break POST).
func (s *Server) outer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o := r.Header.Get("Origin"); o != "" {
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", "*")
			h.Set("Access-Control-Expose-Headers", "ETag, Location, Content-Location, Last-Modified, Link, X-Request-Id, WWW-Authenticate")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, DELETE, OPTIONS")
				h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist, If-Modified-Since, X-Request-Id")
				h.Set("Access-Control-Max-Age", "86400")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		if p := r.URL.Path; len(p) > 1 && strings.HasSuffix(p, "/") {
			r.URL.Path = strings.TrimRight(p, "/")
			if r.URL.RawPath != "" {
				r.URL.RawPath = strings.TrimRight(r.URL.RawPath, "/")
			}
		}
		next.ServeHTTP(w, r)
	})
}

// Ready reports whether the store answers, for /readyz.
func (s *Server) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return s.store.Ping(ctx)
}
