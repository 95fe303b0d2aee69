package handlers

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/store"
	"github.com/gin-gonic/gin"
)

const fhirJSON = "application/fhir+json; charset=utf-8"

// fail writes any error as an OperationOutcome: a *fhir.Error with its status and headers, anything else as a
// logged 500 whose details stay in the log.
func (s *Server) fail(c *gin.Context, err error) {
	fe, ok := fhir.AsError(err)
	if !ok {
		s.log.Error("internal error", "id", c.GetString(keyRequestID), "method", c.Request.Method, "path", c.Request.URL.Path, "err", err)
	}
	if ok {
		for k, v := range fe.Headers {
			c.Header(k, v)
		}
	}
	status, body := fhir.Outcome(err)
	s.writeJSON(c, status, body)
	c.Abort()
}

// writeJSON writes FHIR JSON, pretty-printed when the request says _pretty=true; HEAD gets headers only.
func (s *Server) writeJSON(c *gin.Context, status int, body []byte) {
	if c.Request.URL.RawQuery != "" && c.Query("_pretty") == "true" {
		var buf bytes.Buffer
		if json.Indent(&buf, body, "", "  ") == nil {
			body = buf.Bytes()
		}
	}
	if c.Request.Method == http.MethodHead {
		c.Header("Content-Type", fhirJSON)
		c.Status(status)
		return
	}
	c.Data(status, fhirJSON, body)
}

func etag(st *store.Stored) string { return `W/"` + st.VersionID() + `"` }

// versionHeaders sets ETag and Last-Modified for a version.
func versionHeaders(c *gin.Context, st *store.Stored) {
	h := c.Writer.Header()
	h["ETag"] = []string{etag(st)}
	h["Last-Modified"] = []string{st.Updated.UTC().Format(http.TimeFormat)}
}

// location is the absolute URL of a version.
func (s *Server) location(st *store.Stored) string {
	return s.base + "/" + st.Type + "/" + st.ID + "/_history/" + st.VersionID()
}

// writeResource answers with one resource version, applying _summary and _elements.
func (s *Server) writeResource(c *gin.Context, status int, st *store.Stored) {
	versionHeaders(c, st)
	body := st.Raw
	if c.Request.URL.RawQuery != "" {
		if b, err := subsetRaw(body, c.Query("_summary"), c.Query("_elements")); err != nil {
			s.fail(c, err)
			return
		} else {
			body = b
		}
	}
	s.writeJSON(c, status, body)
}

// subsetRaw applies _summary / _elements to stored JSON.
func subsetRaw(raw []byte, summary, elements string) ([]byte, error) {
	if summary == "" && elements == "" || summary == "false" {
		return raw, nil
	}
	switch summary {
	case "", "true", "text", "data":
	case "count":
		return nil, fhir.At(http.StatusBadRequest, fhir.IssueInvalid, "_summary", "_summary=count applies to searches only")
	default:
		return nil, fhir.At(http.StatusBadRequest, fhir.IssueInvalid, "_summary", "_summary must be true, text, data, count or false, got %q", summary)
	}
	v, err := fhir.ParseJSON(raw)
	if err != nil {
		return nil, err
	}
	o := v.(*fhir.Object)
	var els []string
	if elements != "" {
		for _, e := range strings.Split(elements, ",") {
			if e = strings.TrimSpace(e); e != "" {
				if i := strings.IndexByte(e, '.'); i >= 0 {
					e = e[i+1:]
				}
				els = append(els, e)
			}
		}
	}
	fhir.Subset(o, summary, els)
	return fhir.AppendJSON(nil, o), nil
}

// prefer holds the parts of the Prefer header Carta honours.
type prefer struct {
	ret     string // minimal, representation, OperationOutcome
	lenient bool
}

func parsePrefer(c *gin.Context) prefer {
	var p prefer
	for _, h := range c.Request.Header.Values("Prefer") {
		for _, part := range strings.Split(h, ",") {
			k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
			v = strings.Trim(strings.TrimSpace(v), `"`)
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "return":
				p.ret = v
			case "handling":
				p.lenient = v == "lenient"
			}
		}
	}
	return p
}

// writeWritten answers a create or update: headers, then the body Prefer asks for.
func (s *Server) writeWritten(c *gin.Context, status int, st *store.Stored, info string) {
	versionHeaders(c, st)
	c.Header("Location", s.location(st))
	switch parsePrefer(c).ret {
	case "minimal":
		c.Status(status)
	case "OperationOutcome":
		s.writeJSON(c, status, fhir.Info("%s", info))
	default:
		s.writeJSON(c, status, st.Raw)
	}
}
