package handlers

import (
	"net/http"

	"github.com/carta-fhir/carta/fhir"
	"github.com/gin-gonic/gin"
)

// routes lists the whole HTTP surface. Routes are registered per resource type (not /:type/:id) so that
// type-specific operations can sit beside them and unknown types fall through to a clear 404.
func (s *Server) routes(r *gin.Engine) {
	r.GET("/healthz", s.healthz)
	r.GET("/metrics", s.metrics)
	r.GET("/readyz", s.readyz)
	r.GET("/.well-known/jwks.json", s.jwks)
	r.GET("/fhir/.well-known/jwks.json", s.jwks)

	if s.auth != nil {
		s.authRoutes(r)
	}
	if s.demo {
		s.demoRoutes(r)
	}
	r.GET("/fhir/metadata", s.negotiate, s.metadata)
	r.HEAD("/fhir/metadata", s.negotiate, s.metadata)

	api := r.Group("/fhir", s.negotiate, s.authenticate)
	api.POST("", s.bundle)
	api.GET("/_history", s.history(""))
	for _, typ := range fhir.R4().ResourceTypes() {
		t := api.Group("/" + typ)
		get(t, "", s.search(typ))
		t.POST("/_search", s.search(typ))
		t.POST("", s.create(typ))
		t.PUT("", s.conditionalUpdate(typ))
		t.DELETE("", s.conditionalDelete(typ))
		get(t, "/_history", s.history(typ))
		get(t, "/:id", s.read(typ))
		t.PUT("/:id", s.update(typ))
		t.DELETE("/:id", s.delete(typ))
		get(t, "/:id/_history", s.history(typ))
		get(t, "/:id/_history/:vid", s.vread(typ))
		switch typ {
		case "Patient":
			get(t, "/:id/$everything", s.everything)
		case "Task":
			t.POST("/:id/:op", s.taskOperation)
			get(t, "/$deadlines", s.deadlines)
		case "Communication":
			t.POST("/$correctionrequest", s.correctionRequest)
			t.POST("/$correction-request", s.correctionRequest)
		}
	}
	r.NoRoute(s.negotiate, s.noRoute)
	r.NoMethod(s.negotiate, s.noMethod)
}

// get registers GET and HEAD (HEAD answers like GET without a body).
func get(g *gin.RouterGroup, path string, h gin.HandlerFunc) {
	g.GET(path, h)
	g.HEAD(path, h)
}

func (s *Server) noRoute(c *gin.Context) {
	p := c.Request.URL.Path
	if len(p) > 6 && p[:6] == "/fhir/" {
		rest := p[6:]
		typ := rest
		for i := 0; i < len(rest); i++ {
			if rest[i] == '/' {
				typ = rest[:i]
				break
			}
		}
		if !fhir.R4().IsResourceType(typ) {
			s.fail(c, fhir.Errorf(http.StatusNotFound, fhir.IssueNotSupported, "%q is not a resource type this FHIR R4 server serves (types are case-sensitive, e.g. Patient)", typ))
			return
		}
		s.fail(c, fhir.Errorf(http.StatusNotFound, fhir.IssueNotSupported, "no FHIR interaction at %s", p))
		return
	}
	s.fail(c, fhir.Errorf(http.StatusNotFound, fhir.IssueNotFound, "nothing at %s; the FHIR API is under /fhir", p))
}

func (s *Server) noMethod(c *gin.Context) {
	s.fail(c, fhir.Errorf(http.StatusMethodNotAllowed, fhir.IssueNotSupported, "%s is not supported on %s (this server does not offer PATCH or the operation requested)", c.Request.Method, c.Request.URL.Path))
}

func (s *Server) healthz(c *gin.Context) {
	c.Data(http.StatusOK, "application/json", []byte(`{"status":"ok"}`))
}

func (s *Server) readyz(c *gin.Context) {
	if err := s.ready(c.Request.Context()); err != nil {
		s.log.Warn("not ready", "err", err)
		c.Data(http.StatusServiceUnavailable, "application/json", []byte(`{"status":"unavailable","reason":"the database does not answer"}`))
		return
	}
	c.Data(http.StatusOK, "application/json", []byte(`{"status":"ready"}`))
}

func (s *Server) jwks(c *gin.Context) {
	c.Header("Cache-Control", "public, max-age=300")
	c.Data(http.StatusOK, "application/json", s.keys.JWKS())
}

func (s *Server) metadata(c *gin.Context) {
	c.Header("ETag", s.capabilityETag)
	if c.GetHeader("If-None-Match") == s.capabilityETag {
		c.Status(http.StatusNotModified)
		return
	}
	s.writeJSON(c, http.StatusOK, s.capability)
}
