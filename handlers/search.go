package handlers

import (
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/store"
	"github.com/gin-gonic/gin"
)

// searchParams gathers a search's parameters: the URL query, plus the form body of POST _search.
func (s *Server) searchParams(c *gin.Context) (url.Values, error) {
	vals := c.Request.URL.Query()
	if c.Request.Method == http.MethodPost {
		body, err := s.readBodyOptional(c)
		if err != nil {
			return nil, err
		}
		if len(body) > 0 {
			form, err := url.ParseQuery(string(body))
			if err != nil {
				return nil, fhir.Errorf(http.StatusBadRequest, fhir.IssueInvalid, "the _search body is not application/x-www-form-urlencoded: %v", err)
			}
			for k, v := range form {
				vals[k] = append(vals[k], v...)
			}
		}
	}
	delete(vals, "_format")
	delete(vals, "_pretty")
	return vals, nil
}

func (s *Server) readBodyOptional(c *gin.Context) ([]byte, error) {
	if c.Request.ContentLength == 0 {
		return nil, nil
	}
	b, err := s.readBody(c)
	if fe, ok := fhir.AsError(err); ok && fe.Status == http.StatusBadRequest && fe.Issues[0].Code == fhir.IssueRequired {
		return nil, nil
	}
	return b, err
}

func (s *Server) search(typ string) gin.HandlerFunc {
	return func(c *gin.Context) {
		p := principal(c)
		if _, err := p.Require(typ, auth.PermSearch); err != nil {
			s.fail(c, err)
			return
		}
		vals, err := s.searchParams(c)
		if err != nil {
			s.fail(c, err)
			return
		}
		q, err := fhir.ParseQuery(typ, vals, fhir.QueryOptions{Base: s.base, Loc: s.loc, Lenient: parsePrefer(c).lenient})
		if err != nil {
			s.fail(c, err)
			return
		}
		var auditWarnings []fhir.Issue
		if typ == "AuditEvent" {
			if auditWarnings, err = s.materializeFor(c.Request.Context(), p.Access(), vals); err != nil {
				s.fail(c, err)
				return
			}
		}
		page, err := s.store.Search(c.Request.Context(), q, p.Access())
		if err != nil {
			s.fail(c, err)
			return
		}
		page.Warnings = append(page.Warnings, auditWarnings...)
		more, err := s.disputeIncludes(c.Request.Context(), p, page)
		if err != nil {
			s.fail(c, err)
			return
		}
		page.Included = append(page.Included, more...)
		s.auditRead(c.Request.Context(), "search-type", append(append([]*store.Stored{}, page.Matches...), page.Included...)...)
		body, err := s.searchBundle(q, page)
		if err != nil {
			s.fail(c, err)
			return
		}
		s.writeJSON(c, http.StatusOK, body)
	}
}

// pageURL is the absolute URL of a search page.
func (s *Server) pageURL(typ string, params url.Values, cursor string) string {
	v := url.Values{}
	for k, vs := range params {
		v[k] = vs
	}
	if cursor != "" {
		v.Set("_cursor", cursor)
	}
	u := s.base + "/" + typ
	if enc := v.Encode(); enc != "" {
		u += "?" + enc
	}
	return u
}

func (s *Server) searchBundle(q *fhir.Query, page *store.Page) ([]byte, error) {
	links := [][2]string{{"self", s.pageURL(q.Type, q.Params, q.Cursor)}}
	if q.Cursor != "" {
		links = append(links, [2]string{"first", s.pageURL(q.Type, q.Params, "")})
	}
	if page.Prev != "" {
		links = append(links, [2]string{"previous", s.pageURL(q.Type, q.Params, page.Prev)})
	}
	if page.Next != "" {
		links = append(links, [2]string{"next", s.pageURL(q.Type, q.Params, page.Next)})
	}
	b := fhir.NewBundle("searchset", page.Total, links)
	add := func(st *store.Stored, mode string) error {
		raw := st.Raw
		if q.Summary != "" || len(q.Elements) > 0 {
			v, err := fhir.ParseJSON(raw)
			if err != nil {
				return err
			}
			o := v.(*fhir.Object)
			fhir.Subset(o, q.Summary, q.Elements)
			raw = fhir.AppendJSON(nil, o)
		}
		b.Add(fhir.Entry{FullURL: s.base + "/" + st.Type + "/" + st.ID, Raw: raw, SearchMode: mode})
		return nil
	}
	for _, m := range page.Matches {
		if err := add(m, "match"); err != nil {
			return nil, err
		}
	}
	for _, m := range page.Included {
		if err := add(m, "include"); err != nil {
			return nil, err
		}
	}
	warnings := append(append([]fhir.Issue(nil), q.Warnings...), page.Warnings...)
	if len(warnings) > 0 {
		b.Add(fhir.Entry{Raw: fhir.OutcomeJSON(warnings...), SearchMode: "outcome"})
	}
	return b.Bytes(), nil
}

// history answers instance (typ and :id), type (typ) and system ("") history.
func (s *Server) history(typ string) gin.HandlerFunc {
	return func(c *gin.Context) {
		p := principal(c)
		id := c.Param("id")
		perm := byte(auth.PermSearch)
		if id != "" {
			perm = auth.PermRead
		}
		if typ != "" {
			g, err := p.Require(typ, perm)
			if err != nil {
				s.fail(c, err)
				return
			}
			if len(g.Filters) > 0 {
				s.fail(c, fhir.Errorf(http.StatusForbidden, fhir.IssueForbidden, "history cannot be checked against the token's restricted %s scope", typ))
				return
			}
		}
		opt, err := historyOptions(c)
		if err != nil {
			s.fail(c, err)
			return
		}
		acc := p.Access()
		if typ == "AuditEvent" || typ == "" {
			// History has no place for a warning: it shows what is converted once the time allowed is up.
			if _, err := s.materializeFor(c.Request.Context(), acc, nil); err != nil {
				s.fail(c, err)
				return
			}
		}
		if typ == "" {
			// System history covers the types the token may search.
			acc = &fhir.Access{Patient: acc.Patient, Read: acc.Search, Search: acc.Search}
		}
		h, err := s.store.History(c.Request.Context(), typ, id, opt, acc)
		if err != nil {
			s.fail(c, err)
			return
		}
		path := s.base
		if typ != "" {
			path += "/" + typ
			if id != "" {
				path += "/" + id
			}
		}
		path += "/_history"
		params := url.Values{}
		for k, v := range c.Request.URL.Query() {
			if k != "_cursor" && k != "_format" && k != "_pretty" {
				params[k] = v
			}
		}
		link := func(cursor string) string {
			v := url.Values{}
			for k, vs := range params {
				v[k] = vs
			}
			if cursor != "" {
				v.Set("_cursor", cursor)
			}
			if enc := v.Encode(); enc != "" {
				return path + "?" + enc
			}
			return path
		}
		links := [][2]string{{"self", link(opt.Cursor)}}
		if h.Next != "" {
			links = append(links, [2]string{"next", link(h.Next)})
		}
		b := fhir.NewBundle("history", h.Total, links)
		var seen []string
		for _, e := range h.Entries {
			seen = append(seen, e.Type+"/"+e.ID)
		}
		interaction := "history-system"
		switch {
		case id != "":
			interaction = "history-instance"
		case typ != "":
			interaction = "history-type"
		}
		s.auditRefs(c.Request.Context(), interaction, uniqStrings(seen))
		for _, e := range h.Entries {
			entry := fhir.Entry{FullURL: s.base + "/" + e.Type + "/" + e.ID, Raw: e.Raw, ETag: etag(e), LastModified: e.Updated}
			switch {
			case e.Deleted:
				entry.Method, entry.URL, entry.Status = http.MethodDelete, e.Type+"/"+e.ID, "204 No Content"
			case e.Method == http.MethodPost:
				entry.Method, entry.URL, entry.Status = http.MethodPost, e.Type, "201 Created"
			default:
				entry.Method, entry.URL, entry.Status = http.MethodPut, e.Type+"/"+e.ID, "200 OK"
				if e.Version == 1 {
					entry.Status = "201 Created"
				}
			}
			b.Add(entry)
		}
		s.writeJSON(c, http.StatusOK, b.Bytes())
	}
}

func historyOptions(c *gin.Context) (store.HistoryOptions, error) {
	var opt store.HistoryOptions
	q := c.Request.URL.Query()
	for k, v := range q {
		switch k {
		case "_count":
			n, err := strconv.Atoi(v[0])
			if err != nil || n < 1 {
				return opt, fhir.At(http.StatusBadRequest, fhir.IssueInvalid, "_count", "_count must be a positive whole number, got %q", v[0])
			}
			opt.Count = n
		case "_since", "_at":
			d, err := fhir.ParseDateTime("search", v[0], time.UTC)
			if err != nil {
				return opt, fhir.At(http.StatusBadRequest, fhir.IssueInvalid, k, "%s: %v", k, err)
			}
			if k == "_since" {
				opt.Since = d.T
			} else {
				_, hi := d.Range()
				opt.At = hi.Add(-time.Microsecond)
			}
		case "_cursor":
			opt.Cursor = v[0]
		case "_format", "_pretty":
		default:
			return opt, fhir.At(http.StatusBadRequest, fhir.IssueNotSupported, k, "%q is not a history parameter (use _count, _since, _at)", k)
		}
	}
	return opt, nil
}
