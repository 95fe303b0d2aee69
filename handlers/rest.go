package handlers

import (
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/store"
	"github.com/gin-gonic/gin"
)

func (s *Server) read(typ string) gin.HandlerFunc {
	return func(c *gin.Context) {
		p := principal(c)
		if _, err := p.Require(typ, auth.PermRead); err != nil {
			s.fail(c, err)
			return
		}
		st, err := s.store.Read(c.Request.Context(), typ, c.Param("id"), p.Access())
		if err != nil {
			s.fail(c, err)
			return
		}
		s.auditRead(c.Request.Context(), "read", st)
		s.linkDisputes(c, st)
		if notModified(c, st) {
			return
		}
		s.writeResource(c, http.StatusOK, st)
	}
}

// notModified answers 304 to If-None-Match / If-Modified-Since that the version satisfies.
func notModified(c *gin.Context, st *store.Stored) bool {
	if inm := c.GetHeader("If-None-Match"); inm != "" {
		if inm == etag(st) || inm == `"`+st.VersionID()+`"` || inm == "*" {
			versionHeaders(c, st)
			c.Status(http.StatusNotModified)
			return true
		}
		return false
	}
	if ims := c.GetHeader("If-Modified-Since"); ims != "" {
		if t, err := http.ParseTime(ims); err == nil && !st.Updated.Truncate(time.Second).After(t) {
			versionHeaders(c, st)
			c.Status(http.StatusNotModified)
			return true
		}
	}
	return false
}

func (s *Server) vread(typ string) gin.HandlerFunc {
	return func(c *gin.Context) {
		p := principal(c)
		if _, err := p.Require(typ, auth.PermRead); err != nil {
			s.fail(c, err)
			return
		}
		v, ok := store.ParseVersion(c.Param("vid"))
		if !ok {
			s.fail(c, fhir.Errorf(http.StatusNotFound, fhir.IssueNotFound, "%q is not a version of %s/%s (versions are 1, 2, ...)", c.Param("vid"), typ, c.Param("id")))
			return
		}
		if g := p.Grant(typ, auth.PermRead); len(g.Filters) > 0 {
			s.fail(c, fhir.Errorf(http.StatusForbidden, fhir.IssueForbidden, "earlier versions cannot be checked against the token's restricted %s scope", typ))
			return
		}
		st, err := s.store.VRead(c.Request.Context(), typ, c.Param("id"), v, p.Access())
		if err != nil {
			s.fail(c, err)
			return
		}
		s.auditRead(c.Request.Context(), "vread", st)
		s.writeResource(c, http.StatusOK, st)
	}
}

// parseBodyResource reads and validates the resource in the request body.
func (s *Server) parseBodyResource(c *gin.Context, typ string) (*fhir.Object, error) {
	body, err := s.readBody(c)
	if err != nil {
		return nil, err
	}
	return fhir.ParseResource(body, typ)
}

// checkWriteScope refuses a write a restricted scope (…cu?category=x) does not cover.
func (s *Server) checkWriteScope(typ string, g fhir.Grant, res *fhir.Object) error {
	if len(g.Filters) == 0 {
		return nil
	}
	for _, f := range g.Filters {
		if s.store.Indexer().Matches(res, f) {
			return nil
		}
	}
	return fhir.Errorf(http.StatusForbidden, fhir.IssueForbidden, "the token's %s scope is restricted and this %s does not match its criteria", typ, typ)
}

// checkCurrent returns a store callback refusing changes to a current version a restricted scope does not cover.
func (s *Server) checkCurrent(typ string, g fhir.Grant) func(*store.Stored) error {
	if len(g.Filters) == 0 {
		return nil
	}
	return func(cur *store.Stored) error {
		o, err := fhir.ParseResource(cur.Raw, typ)
		if err != nil {
			return err
		}
		return s.checkWriteScope(typ, g, o)
	}
}

// parseConditional parses criteria from a header (If-None-Exist) or URL: "identifier=x", "?identifier=x" or
// "Patient?identifier=x".
func (s *Server) parseConditional(typ, raw, what string) (*fhir.Query, error) {
	raw = strings.TrimPrefix(raw, s.base+"/")
	raw = strings.TrimPrefix(raw, typ)
	raw = strings.TrimPrefix(raw, "?")
	vals, err := url.ParseQuery(raw)
	if err != nil || len(vals) == 0 {
		return nil, fhir.Errorf(http.StatusBadRequest, fhir.IssueInvalid, "%s must hold search criteria such as identifier=system|value, got %q", what, raw)
	}
	q, err := fhir.ParseQuery(typ, vals, fhir.QueryOptions{Base: s.base, Loc: s.loc})
	if err != nil {
		return nil, err
	}
	if len(q.Clauses) == 0 {
		return nil, fhir.Errorf(http.StatusBadRequest, fhir.IssueInvalid, "%s has no search criteria", what)
	}
	return q, nil
}

// writeInput authorizes a write of typ and reads the resource it carries: the scope must allow perm, the body
// must be a valid resource, and a restricted scope must cover it.
func (s *Server) writeInput(c *gin.Context, typ string, perm byte) (*auth.Principal, fhir.Grant, *fhir.Object, error) {
	p := principal(c)
	g, err := p.Require(typ, perm)
	if err != nil {
		return nil, g, nil, err
	}
	res, err := s.parseBodyResource(c, typ)
	if err != nil {
		return nil, g, nil, err
	}
	if err := s.checkWriteScope(typ, g, res); err != nil {
		return nil, g, nil, err
	}
	return p, g, res, nil
}

func (s *Server) create(typ string) gin.HandlerFunc {
	return func(c *gin.Context) {
		p, _, res, err := s.writeInput(c, typ, auth.PermCreate)
		if err != nil {
			s.fail(c, err)
			return
		}
		var opt store.CreateOptions
		if h := c.GetHeader("If-None-Exist"); h != "" {
			if opt.IfNoneExist, err = s.parseConditional(typ, h, "If-None-Exist"); err != nil {
				s.fail(c, err)
				return
			}
		}
		w, err := s.store.Create(c.Request.Context(), typ, res, opt, p.Access())
		if err != nil {
			s.fail(c, err)
			return
		}
		if w.Unchanged {
			s.writeWritten(c, http.StatusOK, w.Stored, "If-None-Exist matched "+typ+"/"+w.ID+"; nothing was created")
			return
		}
		s.writeWritten(c, http.StatusCreated, w.Stored, "created "+typ+"/"+w.ID)
	}
}

func ifMatch(c *gin.Context) (string, error) {
	h := c.GetHeader("If-Match")
	if h == "" {
		return "", nil
	}
	v := strings.TrimPrefix(strings.TrimSpace(h), "W/")
	v = strings.Trim(v, `"`)
	if _, ok := store.ParseVersion(v); !ok {
		return "", fhir.Errorf(http.StatusBadRequest, fhir.IssueInvalid, `If-Match must be a version ETag such as W/"3", got %q`, h)
	}
	return v, nil
}

func (s *Server) update(typ string) gin.HandlerFunc {
	return func(c *gin.Context) {
		id := c.Param("id")
		if !fhir.ValidID(id) {
			s.fail(c, fhir.Errorf(http.StatusBadRequest, fhir.IssueInvalid, "%q is not a valid resource id (1-64 of A-Z a-z 0-9 - .)", id))
			return
		}
		p, g, res, err := s.writeInput(c, typ, auth.PermUpdate)
		if err != nil {
			s.fail(c, err)
			return
		}
		if bid := res.String("id"); bid != id {
			if bid == "" {
				s.fail(c, fhir.At(http.StatusBadRequest, fhir.IssueRequired, typ+".id", "the resource must carry id %q, the id in the URL", id))
			} else {
				s.fail(c, fhir.At(http.StatusBadRequest, fhir.IssueInvalid, typ+".id", "the resource's id %q differs from the id in the URL %q", bid, id))
			}
			return
		}
		im, err := ifMatch(c)
		if err != nil {
			s.fail(c, err)
			return
		}
		w, err := s.store.Update(c.Request.Context(), typ, id, res, store.UpdateOptions{IfMatch: im, Check: s.checkCurrent(typ, g)}, p.Access())
		if err != nil {
			s.fail(c, err)
			return
		}
		s.answerUpdate(c, w)
	}
}

func (s *Server) answerUpdate(c *gin.Context, w *store.WriteResult) {
	switch {
	case w.Created:
		s.writeWritten(c, http.StatusCreated, w.Stored, "created "+w.Type+"/"+w.ID)
	case w.Unchanged:
		s.writeWritten(c, http.StatusOK, w.Stored, "the content is unchanged; no new version was made")
	default:
		s.writeWritten(c, http.StatusOK, w.Stored, "updated "+w.Type+"/"+w.ID+" to version "+w.VersionID())
	}
}

func (s *Server) conditionalUpdate(typ string) gin.HandlerFunc {
	return func(c *gin.Context) {
		q, err := s.parseConditional(typ, c.Request.URL.RawQuery, "a conditional update URL")
		if err != nil {
			s.fail(c, err)
			return
		}
		p, g, res, err := s.writeInput(c, typ, auth.PermUpdate)
		if err != nil {
			s.fail(c, err)
			return
		}
		var w *store.WriteResult
		err = s.store.InTx(c.Request.Context(), func(tx *store.Tx) error {
			var err error
			w, err = conditionalUpdate(tx, typ, q, res, s.checkCurrent(typ, g), p.Access())
			return err
		})
		if err != nil {
			s.fail(c, err)
			return
		}
		s.answerUpdate(c, w)
	}
}

// conditionalUpdate updates the one match of q, creates when nothing matches, and refuses several matches (412).
func conditionalUpdate(tx *store.Tx, typ string, q *fhir.Query, res *fhir.Object, check func(*store.Stored) error, acc *fhir.Access) (*store.WriteResult, error) {
	found, err := tx.Match(q, acc, 2)
	if err != nil {
		return nil, err
	}
	bid := res.String("id")
	switch len(found) {
	case 0:
		if bid != "" {
			return tx.Update(typ, bid, res, store.UpdateOptions{Check: check}, acc)
		}
		return tx.Create(typ, res, store.CreateOptions{Method: http.MethodPut}, acc)
	case 1:
		if bid != "" && bid != found[0].ID {
			return nil, fhir.At(http.StatusBadRequest, fhir.IssueInvalid, typ+".id", "the criteria match %s/%s but the resource's id is %q", typ, found[0].ID, bid)
		}
		return tx.Update(typ, found[0].ID, res, store.UpdateOptions{Check: check}, acc)
	default:
		return nil, fhir.Errorf(http.StatusPreconditionFailed, fhir.IssueMultiple, "the conditional update criteria match more than one %s", typ)
	}
}

func (s *Server) delete(typ string) gin.HandlerFunc {
	return func(c *gin.Context) {
		p := principal(c)
		g, err := p.Require(typ, auth.PermDelete)
		if err != nil {
			s.fail(c, err)
			return
		}
		im, err := ifMatch(c)
		if err != nil {
			s.fail(c, err)
			return
		}
		w, err := s.store.Delete(c.Request.Context(), typ, c.Param("id"), store.DeleteOptions{IfMatch: im, Check: s.checkCurrent(typ, g)}, p.Access())
		if err != nil {
			s.fail(c, err)
			return
		}
		s.answerDelete(c, w)
	}
}

func (s *Server) answerDelete(c *gin.Context, w *store.WriteResult) {
	if w != nil && !w.Unchanged {
		c.Header("ETag", etag(w.Stored))
	}
	if parsePrefer(c).ret == "OperationOutcome" {
		msg := "nothing matched; nothing was deleted"
		if w != nil {
			msg = "deleted " + w.Type + "/" + w.ID
			if w.Unchanged {
				msg = w.Type + "/" + w.ID + " was already deleted"
			}
		}
		s.writeJSON(c, http.StatusOK, fhir.Info("%s", msg))
		return
	}
	c.Status(http.StatusNoContent)
}

func (s *Server) conditionalDelete(typ string) gin.HandlerFunc {
	return func(c *gin.Context) {
		p := principal(c)
		g, err := p.Require(typ, auth.PermDelete)
		if err != nil {
			s.fail(c, err)
			return
		}
		q, err := s.parseConditional(typ, c.Request.URL.RawQuery, "a conditional delete URL")
		if err != nil {
			s.fail(c, err)
			return
		}
		var w *store.WriteResult
		err = s.store.InTx(c.Request.Context(), func(tx *store.Tx) error {
			found, err := tx.Match(q, p.Access(), 2)
			if err != nil {
				return err
			}
			switch len(found) {
			case 0:
				return nil
			case 1:
				w, err = tx.Delete(typ, found[0].ID, store.DeleteOptions{Check: s.checkCurrent(typ, g)}, p.Access())
				return err
			default:
				return fhir.Errorf(http.StatusPreconditionFailed, fhir.IssueMultiple, "the conditional delete criteria match more than one %s; this server deletes one at a time", typ)
			}
		})
		if err != nil {
			s.fail(c, err)
			return
		}
		s.answerDelete(c, w)
	}
}
