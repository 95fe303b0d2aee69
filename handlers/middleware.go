package handlers

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/gin-gonic/gin"
)

const (
	keyRequestID = "carta.rid"
	keyPrincipal = "carta.principal"
)

// requestIDs numbers requests after a random per-process prefix: unique across replicas without a system call
// per request.
var (
	requestPrefix = func() string {
		b := make([]byte, 4)
		rand.Read(b)
		return hex.EncodeToString(b) + "-"
	}()
	requestSeq atomic.Uint64
)

// requestID takes a sane X-Request-Id from the client or makes one, and echoes it.
func (s *Server) requestID(c *gin.Context) {
	id := c.GetHeader("X-Request-Id")
	if id == "" || len(id) > 128 || strings.IndexFunc(id, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
		id = requestPrefix + strconv.FormatUint(requestSeq.Add(1), 36)
	}
	c.Set(keyRequestID, id)
	c.Header("X-Request-Id", id)
	c.Next()
}

// accessLog writes one structured line per request: never bodies, never tokens.
func (s *Server) accessLog(c *gin.Context) {
	if !s.log.Enabled(c.Request.Context(), slog.LevelInfo) {
		c.Next()
		return
	}
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "(no route)"
	}
	attrs := []slog.Attr{
		slog.String("id", c.GetString(keyRequestID)),
		slog.String("method", c.Request.Method),
		slog.String("route", route),
		slog.Int("status", c.Writer.Status()),
		slog.Float64("ms", float64(time.Since(start).Microseconds())/1000),
		slog.Int("bytes", c.Writer.Size()),
	}
	if p, ok := c.Get(keyPrincipal); ok {
		attrs = append(attrs, slog.String("sub", p.(*auth.Principal).Subject))
	}
	s.log.LogAttrs(c.Request.Context(), slog.LevelInfo, "request", attrs...)
}

// recover turns a panic into a logged 500 OperationOutcome.
func (s *Server) recover(c *gin.Context) {
	defer func() {
		if v := recover(); v != nil {
			if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
				panic(v)
			}
			s.log.Error("panic", "id", c.GetString(keyRequestID), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if !c.Writer.Written() {
				s.fail(c, fmt.Errorf("panic: %v", v))
			}
			c.Abort()
		}
	}()
	c.Next()
}

// jsonFormats are the _format values and media types that mean FHIR JSON.
var jsonFormats = map[string]bool{"json": true, "application/json": true, "application/fhir+json": true, "application/json+fhir": true}

var xmlFormats = map[string]bool{"xml": true, "text/xml": true, "application/xml": true, "application/fhir+xml": true, "application/xml+fhir": true}

// negotiate refuses what Carta cannot produce or read: XML (406 or 415), other FHIR versions (406).
func (s *Server) negotiate(c *gin.Context) {
	if c.Request.URL.RawQuery != "" {
		if f := c.Query("_format"); f != "" {
			f = strings.TrimSpace(strings.SplitN(f, ";", 2)[0])
			if !jsonFormats[f] {
				if xmlFormats[f] {
					s.fail(c, fhir.At(http.StatusNotAcceptable, fhir.IssueNotSupported, "_format", "_format=%s: this server speaks FHIR JSON only; use _format=json", f))
				} else {
					s.fail(c, fhir.At(http.StatusNotAcceptable, fhir.IssueNotSupported, "_format", "_format=%s is not a FHIR format; use _format=json", f))
				}
				return
			}
			// _format overrides Accept, but not Content-Type.
			s.checkBody(c)
			return
		}
	}
	if a := c.GetHeader("Accept"); a != "" && !acceptsJSON(a) {
		s.fail(c, fhir.Errorf(http.StatusNotAcceptable, fhir.IssueNotSupported, "Accept: %s: this server produces FHIR JSON only (application/fhir+json)", a))
		return
	}
	if v := fhirVersionParam(c.GetHeader("Accept")); v != "" && v != "4.0" && v != "4.0.1" {
		s.fail(c, fhir.Errorf(http.StatusNotAcceptable, fhir.IssueNotSupported, "fhirVersion=%s was asked for; this server implements FHIR 4.0.1 only", v))
		return
	}
	s.checkBody(c)
}

// checkBody refuses request bodies that are not JSON (415).
func (s *Server) checkBody(c *gin.Context) {
	if c.Request.Method != http.MethodPost && c.Request.Method != http.MethodPut {
		c.Next()
		return
	}
	ct := c.GetHeader("Content-Type")
	mt := strings.ToLower(strings.TrimSpace(strings.SplitN(ct, ";", 2)[0]))
	switch {
	case mt == "" || jsonFormats[mt]:
	case mt == "application/x-www-form-urlencoded" && strings.HasSuffix(c.Request.URL.Path, "/_search"):
	case xmlFormats[mt]:
		s.fail(c, fhir.Errorf(http.StatusUnsupportedMediaType, fhir.IssueNotSupported, "Content-Type: %s: this server reads FHIR JSON only; send application/fhir+json", ct))
		return
	default:
		s.fail(c, fhir.Errorf(http.StatusUnsupportedMediaType, fhir.IssueNotSupported, "Content-Type: %s is not supported; send application/fhir+json", ct))
		return
	}
	c.Next()
}

func acceptsJSON(accept string) bool {
	for _, part := range strings.Split(accept, ",") {
		mt := strings.ToLower(strings.TrimSpace(strings.SplitN(part, ";", 2)[0]))
		if q := qValue(part); q == 0 {
			continue
		}
		if mt == "*/*" || mt == "application/*" || jsonFormats[mt] {
			return true
		}
	}
	return false
}

func qValue(part string) float64 {
	for _, p := range strings.Split(part, ";")[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		if k == "q" {
			var f float64
			if _, err := fmt.Sscanf(v, "%g", &f); err == nil {
				return f
			}
		}
	}
	return 1
}

func fhirVersionParam(accept string) string {
	for _, part := range strings.Split(accept, ",") {
		for _, p := range strings.Split(part, ";")[1:] {
			k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(k, "fhirVersion") {
				return strings.Trim(v, `"`)
			}
		}
	}
	return ""
}

// authenticate requires a valid bearer token and records the caller.
func (s *Server) authenticate(c *gin.Context) {
	h := c.GetHeader("Authorization")
	if h == "" {
		s.fail(c, auth.Unauthorized("", "this FHIR API needs an access token: send Authorization: Bearer <token>"))
		return
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		s.fail(c, auth.Unauthorized("invalid_request", "the Authorization header must be: Bearer <token>"))
		return
	}
	p, err := s.verifier.Verify(c.Request.Context(), strings.TrimSpace(tok))
	if err != nil {
		s.fail(c, err)
		return
	}
	c.Set(keyPrincipal, p)
	c.Request = c.Request.WithContext(auth.WithPrincipal(c.Request.Context(), p))
	c.Next()
}

func principal(c *gin.Context) *auth.Principal {
	p, _ := c.Get(keyPrincipal)
	return p.(*auth.Principal)
}

// readBody reads a request body within the size limit (413 past it).
func (s *Server) readBody(c *gin.Context) ([]byte, error) {
	r := http.MaxBytesReader(c.Writer, c.Request.Body, s.maxBody)
	b, err := io.ReadAll(r)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, fhir.Errorf(http.StatusRequestEntityTooLarge, fhir.IssueTooLong, "the request body is larger than the limit of %d bytes", s.maxBody)
		}
		return nil, fhir.Errorf(http.StatusBadRequest, fhir.IssueStructure, "reading the request body failed: %v", err)
	}
	if len(b) == 0 {
		return nil, fhir.Errorf(http.StatusBadRequest, fhir.IssueRequired, "the request has no body; send a FHIR resource as application/fhir+json")
	}
	return b, nil
}
