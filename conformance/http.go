package conformance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
)

// Exchange is one HTTP request and its response, as the report shows it (secrets redacted, bodies cut at 4 kB).
type Exchange struct {
	Method          string            `json:"method"`
	URL             string            `json:"url"`
	RequestHeaders  map[string]string `json:"requestHeaders,omitempty"`
	RequestBody     string            `json:"requestBody,omitempty"`
	Status          int               `json:"status"`
	ResponseHeaders map[string]string `json:"responseHeaders,omitempty"`
	ResponseBody    string            `json:"responseBody,omitempty"`
	Error           string            `json:"error,omitempty"`
}

// Req describes a request.
type Req struct {
	Token       string            // bearer token ("" for none)
	Header      map[string]string // more headers (Accept, Content-Type, Prefer …)
	Body        []byte
	ContentType string
	Form        url.Values // an application/x-www-form-urlencoded body
}

// Resp is a response.
type Resp struct {
	Status int
	Header http.Header
	Body   []byte
	URL    string
	parsed map[string]any
	perr   error
}

// JSON is the body as a JSON object (nil when it is not one).
func (r *Resp) JSON() map[string]any {
	if r.parsed == nil && r.perr == nil {
		r.perr = json.Unmarshal(r.Body, &r.parsed)
	}
	return r.parsed
}

// ResourceType is the body's resourceType ("" when it has none).
func (r *Resp) ResourceType() string { s, _ := r.JSON()["resourceType"].(string); return s }

const maxShown = 4096

var (
	secretField = regexp.MustCompile(`((?:client_secret|password|client_assertion|refresh_token|code_verifier|token)=)[^&]*`)
	secretJSON  = regexp.MustCompile(`("(?:access_token|refresh_token|id_token)"\s*:\s*")[^"]*"`)
)

// Do sends a request. path is absolute, or relative to the FHIR base ("Patient/1", "/metadata"). A network error
// ends the test as errored.
func (t *T) Do(method, path string, q Req) *Resp {
	u := t.url(path)
	var body io.Reader
	b := q.Body
	ct := q.ContentType
	if q.Form != nil {
		b = []byte(q.Form.Encode())
		ct = "application/x-www-form-urlencoded"
	}
	if b != nil {
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.ctx, method, u, body)
	if err != nil {
		t.Errorf("building %s %s: %v", method, u, err)
	}
	if q.Token != "" {
		// A bearer token goes to the server under test only, never to another origin a link points at.
		if sameOrigin(u, t.r.Config.Base) {
			req.Header.Set("Authorization", "Bearer "+q.Token)
		} else {
			t.Logf("not sending the token to %s: another origin than %s", u, t.r.Config.Base)
		}
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	for k, v := range q.Header {
		req.Header.Set(k, v)
	}
	ex := Exchange{Method: method, URL: u, RequestHeaders: shownHeaders(req.Header)}
	if b != nil {
		ex.RequestBody = cut(secretField.ReplaceAllString(string(b), "${1}(redacted)"))
	}
	res, err := t.r.Client.Do(req)
	if err != nil {
		ex.Error = err.Error()
		t.exchanges = append(t.exchanges, ex)
		t.Errorf("%s %s: %v", method, u, err)
	}
	defer res.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		ex.Error = err.Error()
		t.exchanges = append(t.exchanges, ex)
		t.Errorf("%s %s: reading the response: %v", method, u, err)
	}
	ex.Status, ex.ResponseHeaders, ex.ResponseBody = res.StatusCode, shownHeaders(res.Header), cut(secretJSON.ReplaceAllString(string(rb), `${1}(redacted)"`))
	t.exchanges = append(t.exchanges, ex)
	return &Resp{Status: res.StatusCode, Header: res.Header, Body: rb, URL: u}
}

// Get is Do("GET", path, Req{Token: token}).
func (t *T) Get(path, token string) *Resp { return t.Do(http.MethodGet, path, Req{Token: token}) }

// url resolves a path against the FHIR base.
func (t *T) url(path string) string {
	if strings.HasPrefix(path, "http://") || strings.HasPrefix(path, "https://") {
		return path
	}
	return strings.TrimSuffix(t.r.Config.Base, "/") + "/" + strings.TrimPrefix(path, "/")
}

func sameOrigin(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && strings.EqualFold(ua.Scheme, ub.Scheme) && strings.EqualFold(ua.Host, ub.Host)
}

func shownHeaders(h http.Header) map[string]string {
	out := map[string]string{}
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := strings.Join(h[k], ", ")
		if strings.EqualFold(k, "Authorization") {
			if i := strings.IndexByte(v, ' '); i > 0 {
				v = v[:i] + " (redacted)"
			} else {
				v = "(redacted)"
			}
		}
		out[k] = v
	}
	return out
}

func cut(s string) string {
	if len(s) > maxShown {
		return s[:maxShown] + fmt.Sprintf("… (%d bytes in all)", len(s))
	}
	return s
}

// ---- JSON helpers ----------------------------------------------------------------------------------------------

// str walks a JSON value by keys and indexes ("entry", 0, "resource", "id") and returns the string there.
func str(v any, path ...any) string {
	s, _ := walk(v, path...).(string)
	return s
}

func walk(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k < 0 || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func list(v any, path ...any) []any {
	l, _ := walk(v, path...).([]any)
	return l
}

// entries are a Bundle's entries with the given search mode ("" for all).
func entries(bundle map[string]any, mode string) []map[string]any {
	var out []map[string]any
	for _, e := range list(bundle, "entry") {
		m, _ := e.(map[string]any)
		if m == nil {
			continue
		}
		if mode != "" && str(m, "search", "mode") != mode && !(mode == "match" && str(m, "search", "mode") == "") {
			continue
		}
		out = append(out, m)
	}
	return out
}

// resources are the resources of a Bundle's entries with the given search mode.
func resources(bundle map[string]any, mode string) []map[string]any {
	var out []map[string]any
	for _, e := range entries(bundle, mode) {
		if r, ok := e["resource"].(map[string]any); ok {
			out = append(out, r)
		}
	}
	return out
}

// link is a Bundle link's URL by relation.
func link(bundle map[string]any, rel string) string {
	for _, l := range list(bundle, "link") {
		if str(l, "relation") == rel {
			return str(l, "url")
		}
	}
	return ""
}

// refs returns every "reference" value found anywhere in v.
func refs(v any) []string {
	var out []string
	var visit func(any)
	visit = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if s, ok := c.(string); ok && k == "reference" {
					out = append(out, s)
					continue
				}
				visit(c)
			}
		case []any:
			for _, c := range x {
				visit(c)
			}
		}
	}
	visit(v)
	return out
}
