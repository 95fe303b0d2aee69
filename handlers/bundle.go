package handlers

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/store"
	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
)

// bentry is one entry of a batch or transaction being processed.
type bentry struct {
	i        int
	path     string // Bundle.entry[i]
	fullURL  string
	method   string
	rawURL   string
	typ, id  string
	version  int64
	query    url.Values // search or conditional criteria
	resource *fhir.Object
	ifNone   string
	ifMatch  string

	// assigned id for POST (or the match of a conditional create)
	assigned string
	matched  *store.Stored

	// outcome
	err    error
	status int
	stored *store.Stored
	body   []byte // GET results
	note   string
}

func (s *Server) bundle(c *gin.Context) {
	p := principal(c)
	body, err := s.readBody(c)
	if err != nil {
		s.fail(c, err)
		return
	}
	v, err := fhir.ParseJSON(body)
	if err != nil {
		s.fail(c, fhir.Errorf(http.StatusBadRequest, fhir.IssueStructure, "the body is not valid JSON: %v", err))
		return
	}
	o, ok := v.(*fhir.Object)
	if !ok || o.String("resourceType") != "Bundle" {
		s.fail(c, fhir.At(http.StatusBadRequest, fhir.IssueInvalid, "resourceType", "POST to the FHIR base takes a Bundle of type batch or transaction"))
		return
	}
	btype := o.String("type")
	if btype != "batch" && btype != "transaction" {
		s.fail(c, fhir.At(http.StatusBadRequest, fhir.IssueNotSupported, "Bundle.type", "POST to the FHIR base processes batch and transaction Bundles, not %q; to store a Bundle as a resource, POST it to [base]/Bundle", btype))
		return
	}
	out, status, err := s.processBundle(c.Request.Context(), o, p, parsePrefer(c))
	if err != nil {
		s.fail(c, err)
		return
	}
	s.writeJSON(c, status, out)
}

// processBundle runs a batch or transaction Bundle for principal p and returns the response Bundle. A failing
// transaction returns the error of its first failing entry, and nothing it did is kept.
func (s *Server) processBundle(ctx context.Context, o *fhir.Object, p *auth.Principal, pref prefer) ([]byte, int, error) {
	btype := o.String("type")
	entries, issues := s.parseEntries(o, btype == "transaction")
	if btype == "transaction" {
		if len(issues) > 0 {
			return nil, 0, &fhir.Error{Status: http.StatusBadRequest, Issues: issues}
		}
		if err := s.transaction(ctx, entries, p); err != nil {
			return nil, 0, err
		}
	} else {
		s.batch(ctx, entries, p)
	}
	b := fhir.NewBundle(btype+"-response", -1, nil)
	for _, e := range entries {
		b.Add(s.responseEntry(e, pref))
	}
	return b.Bytes(), http.StatusOK, nil
}

func (s *Server) responseEntry(e *bentry, pref prefer) fhir.Entry {
	if e.err != nil {
		status, oo := fhir.Outcome(e.err)
		return fhir.Entry{Status: fmt.Sprintf("%d %s", status, http.StatusText(status)), Outcome: oo}
	}
	out := fhir.Entry{Status: fmt.Sprintf("%d %s", e.status, http.StatusText(e.status))}
	if e.body != nil {
		out.Raw = e.body
		return out
	}
	if e.stored != nil {
		st := e.stored
		out.FullURL = s.base + "/" + st.Type + "/" + st.ID
		out.ETag = etag(st)
		out.LastModified = st.Updated
		if e.method != http.MethodDelete {
			out.Location = st.Type + "/" + st.ID + "/_history/" + st.VersionID()
			switch pref.ret {
			case "representation":
				out.Raw = st.Raw
			case "OperationOutcome":
				out.Outcome = fhir.Info("%s", e.note)
			}
		}
	}
	return out
}

// parseEntries checks every entry's request and resource. For a transaction all problems are reported at once;
// for a batch each entry keeps its own error.
func (s *Server) parseEntries(o *fhir.Object, transaction bool) ([]*bentry, []fhir.Issue) {
	var issues []fhir.Issue
	raw, _ := o.Get("entry")
	list, _ := raw.([]any)
	entries := make([]*bentry, 0, len(list))
	for i, item := range list {
		e := &bentry{i: i, path: "Bundle.entry[" + strconv.Itoa(i) + "]"}
		entries = append(entries, e)
		eo, ok := item.(*fhir.Object)
		if !ok {
			e.err = fhir.At(http.StatusBadRequest, fhir.IssueStructure, e.path, "an entry must be a JSON object")
		} else {
			e.err = s.parseEntry(e, eo)
		}
		if e.err != nil {
			if fe, ok := fhir.AsError(e.err); ok {
				issues = append(issues, fe.Issues...)
			}
		}
	}
	if transaction {
		seen := map[string]int{}
		for _, e := range entries {
			if e.err == nil && e.fullURL != "" {
				if j, dup := seen[e.fullURL]; dup {
					issues = append(issues, fhir.Issue{Severity: fhir.SeverityError, Code: fhir.IssueDuplicate, Expression: e.path + ".fullUrl",
						Diagnostics: fmt.Sprintf("fullUrl %s is used by entry %d too", e.fullURL, j)})
				}
				seen[e.fullURL] = e.i
			}
		}
	}
	return entries, issues
}

func (s *Server) parseEntry(e *bentry, eo *fhir.Object) error {
	e.fullURL = eo.String("fullUrl")
	req := eo.Object("request")
	if req == nil {
		return fhir.At(http.StatusBadRequest, fhir.IssueRequired, e.path+".request", "every batch or transaction entry needs a request (method and url)")
	}
	e.method = req.String("method")
	e.rawURL = req.String("url")
	e.ifNone = req.String("ifNoneExist")
	e.ifMatch = strings.Trim(strings.TrimPrefix(req.String("ifMatch"), "W/"), `"`)
	switch e.method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete:
	case http.MethodPatch:
		return fhir.At(http.StatusMethodNotAllowed, fhir.IssueNotSupported, e.path+".request.method", "PATCH is not supported")
	default:
		return fhir.At(http.StatusBadRequest, fhir.IssueInvalid, e.path+".request.method", "request.method must be GET, HEAD, POST, PUT or DELETE, got %q", e.method)
	}
	if e.rawURL == "" {
		return fhir.At(http.StatusBadRequest, fhir.IssueRequired, e.path+".request.url", "request.url is required")
	}
	u := strings.TrimPrefix(e.rawURL, s.base+"/")
	path, rawQuery, _ := strings.Cut(u, "?")
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return fhir.At(http.StatusBadRequest, fhir.IssueInvalid, e.path+".request.url", "request.url has a malformed query: %v", err)
	}
	e.query = q
	if strings.Contains(path, "$") {
		return fhir.At(http.StatusBadRequest, fhir.IssueNotSupported, e.path+".request.url", "request.url %q invokes an operation; operations cannot be part of a batch or transaction here", e.rawURL)
	}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	e.typ = parts[0]
	if !fhir.R4().IsResourceType(e.typ) {
		return fhir.At(http.StatusBadRequest, fhir.IssueNotSupported, e.path+".request.url", "%q does not start with a resource type this server serves", e.rawURL)
	}
	switch {
	case len(parts) == 1:
	case len(parts) == 2 && parts[1] == "_search" && e.method == http.MethodGet:
	case len(parts) == 2:
		e.id = parts[1]
	case len(parts) == 4 && parts[2] == "_history" && e.method == http.MethodGet:
		e.id = parts[1]
		v, ok := store.ParseVersion(parts[3])
		if !ok {
			return fhir.At(http.StatusBadRequest, fhir.IssueInvalid, e.path+".request.url", "%q is not a version", parts[3])
		}
		e.version = v
	default:
		return fhir.At(http.StatusBadRequest, fhir.IssueNotSupported, e.path+".request.url", "request.url %q is not a supported interaction", e.rawURL)
	}
	if e.id != "" && !fhir.ValidID(e.id) {
		return fhir.At(http.StatusBadRequest, fhir.IssueInvalid, e.path+".request.url", "%q is not a valid id", e.id)
	}
	switch e.method {
	case http.MethodPost:
		if e.id != "" {
			return fhir.At(http.StatusBadRequest, fhir.IssueInvalid, e.path+".request.url", "POST goes to the type (%s), not to an id", e.typ)
		}
	case http.MethodPut, http.MethodDelete:
		if e.id == "" && len(e.query) == 0 {
			return fhir.At(http.StatusBadRequest, fhir.IssueInvalid, e.path+".request.url", "%s needs an id (%s/[id]) or search criteria (%s?...)", e.method, e.typ, e.typ)
		}
	}
	if e.method == http.MethodPost || e.method == http.MethodPut {
		rv, ok := eo.Get("resource")
		ro, isObj := rv.(*fhir.Object)
		if !ok || !isObj {
			return fhir.At(http.StatusBadRequest, fhir.IssueRequired, e.path+".resource", "%s needs a resource", e.method)
		}
		if ro.String("resourceType") != e.typ {
			return fhir.At(http.StatusBadRequest, fhir.IssueInvalid, e.path+".resource.resourceType", "the resource is a %q but request.url is for %s", ro.String("resourceType"), e.typ)
		}
		if issues := fhir.R4().Validate(ro, e.path+".resource"); len(issues) > 0 {
			return fhir.ValidationError(issues)
		}
		if e.method == http.MethodPut && e.id != "" && ro.String("id") != e.id {
			return fhir.At(http.StatusBadRequest, fhir.IssueInvalid, e.path+".resource.id", "the resource's id %q differs from request.url %s", ro.String("id"), e.rawURL)
		}
		e.resource = ro
	}
	return nil
}

var perms = map[string]byte{http.MethodPost: auth.PermCreate, http.MethodPut: auth.PermUpdate, http.MethodDelete: auth.PermDelete}

// authorizeEntry checks the entry against the token's scopes.
func (s *Server) authorizeEntry(e *bentry, p *auth.Principal) (fhir.Grant, error) {
	perm, ok := perms[e.method]
	if !ok {
		perm = auth.PermRead
		if e.id == "" {
			perm = auth.PermSearch
		}
	}
	g, err := p.Require(e.typ, perm)
	if err != nil {
		return g, prefixError(err, e.path)
	}
	if e.resource != nil {
		if err := s.checkWriteScope(e.typ, g, e.resource); err != nil {
			return g, prefixError(err, e.path)
		}
	}
	return g, nil
}

// prefixError names the entry in issues that name nothing.
func prefixError(err error, path string) error {
	fe, ok := fhir.AsError(err)
	if !ok {
		return err
	}
	out := &fhir.Error{Status: fe.Status, Headers: fe.Headers}
	for _, is := range fe.Issues {
		if is.Expression == "" {
			is.Expression = path
		}
		out.Issues = append(out.Issues, is)
	}
	return out
}

func (s *Server) transaction(ctx context.Context, entries []*bentry, p *auth.Principal) error {
	grants := make([]fhir.Grant, len(entries))
	for i, e := range entries {
		g, err := s.authorizeEntry(e, p)
		if err != nil {
			return err
		}
		grants[i] = g
	}
	// FHIR forbids two entries of one transaction touching the same resource: the result would depend on order.
	touched := map[string]int{}
	for _, e := range entries {
		if (e.method == http.MethodPut || e.method == http.MethodDelete) && e.id != "" {
			k := e.typ + "/" + e.id
			if j, dup := touched[k]; dup {
				return fhir.At(http.StatusConflict, fhir.IssueConflict, e.path, "entries %d and %d of this transaction both change %s; a transaction may change a resource once", j, e.i, k)
			}
			touched[k] = e.i
		}
	}
	acc := p.Access()
	inTx := s.store.InTx
	if len(entries) > 20 {
		inTx = s.store.InTxLarge
	}
	return inTx(ctx, func(tx *store.Tx) error {
		// 1. Decide the id of every created resource, so references between entries can be rewritten.
		refs := map[string]string{}
		for _, e := range entries {
			switch e.method {
			case http.MethodPost:
				if e.ifNone != "" {
					q, err := s.parseConditional(e.typ, e.ifNone, "ifNoneExist")
					if err != nil {
						return prefixError(err, e.path+".request.ifNoneExist")
					}
					found, err := tx.Match(q, acc, 2)
					if err != nil {
						return prefixError(err, e.path)
					}
					if len(found) > 1 {
						return fhir.At(http.StatusPreconditionFailed, fhir.IssueMultiple, e.path+".request.ifNoneExist", "ifNoneExist matches more than one %s", e.typ)
					}
					if len(found) == 1 {
						e.matched = found[0]
						e.assigned = found[0].ID
					}
				}
				if e.assigned == "" {
					e.assigned = uuid.NewString()
				}
				if e.fullURL != "" {
					refs[e.fullURL] = e.typ + "/" + e.assigned
				}
			case http.MethodPut:
				if e.id != "" && e.fullURL != "" {
					refs[e.fullURL] = e.typ + "/" + e.id
				}
			}
		}
		// 2. Rewrite references to fullUrls and resolve conditional references.
		for _, e := range entries {
			if e.resource == nil || e.matched != nil {
				continue
			}
			if err := s.rewriteReferences(tx, e, refs, acc); err != nil {
				return err
			}
		}
		// 3. Process in the order FHIR prescribes: DELETE, POST, PUT, GET.
		order := map[string]int{http.MethodDelete: 0, http.MethodPost: 1, http.MethodPut: 2, http.MethodGet: 3, http.MethodHead: 3}
		sorted := append([]*bentry(nil), entries...)
		sort.SliceStable(sorted, func(a, b int) bool { return order[sorted[a].method] < order[sorted[b].method] })
		for _, e := range sorted {
			if err := s.execEntry(ctx, tx, e, grants[e.i], acc); err != nil {
				return prefixError(err, e.path)
			}
		}
		return nil
	})
}

func (s *Server) batch(ctx context.Context, entries []*bentry, p *auth.Principal) {
	acc := p.Access()
	for _, e := range entries {
		if e.err != nil {
			continue
		}
		g, err := s.authorizeEntry(e, p)
		if err != nil {
			e.err = err
			continue
		}
		if e.method == http.MethodGet || e.method == http.MethodHead {
			e.err = s.execEntry(ctx, nil, e, g, acc)
			continue
		}
		e.err = s.store.InTx(ctx, func(tx *store.Tx) error {
			if e.method == http.MethodPost && e.ifNone == "" {
				e.assigned = uuid.NewString()
			}
			if e.resource != nil {
				if err := s.rewriteReferences(tx, e, nil, acc); err != nil {
					return err
				}
			}
			return s.execEntry(ctx, tx, e, g, acc)
		})
	}
}

// rewriteReferences replaces references to other entries' fullUrls with Type/id and resolves conditional
// references (Patient?identifier=x) to the one resource they match.
func (s *Server) rewriteReferences(tx *store.Tx, e *bentry, refs map[string]string, acc *fhir.Access) error {
	var walkErr error
	resolve := func(ref string, path string) (string, bool) {
		if to, ok := refs[ref]; ok {
			return to, true
		}
		if strings.HasPrefix(ref, "urn:uuid:") || strings.HasPrefix(ref, "urn:oid:") {
			if refs != nil {
				walkErr = fhir.At(http.StatusBadRequest, fhir.IssueNotFound, path, "reference %s matches no entry's fullUrl in this transaction", ref)
			}
			return "", false
		}
		if typ, query, ok := strings.Cut(ref, "?"); ok && fhir.R4().IsResourceType(typ) {
			q, err := s.parseConditional(typ, query, "a conditional reference")
			if err != nil {
				walkErr = prefixError(err, path)
				return "", false
			}
			found, err := tx.Match(q, acc, 2)
			if err != nil {
				walkErr = err
				return "", false
			}
			if len(found) != 1 {
				walkErr = fhir.At(http.StatusPreconditionFailed, fhir.IssueMultiple, path, "conditional reference %s matches %d resources; it must match exactly one", ref, len(found))
				return "", false
			}
			return typ + "/" + found[0].ID, true
		}
		return "", false
	}
	walkReferences(e.resource, e.path+".resource", resolve)
	return walkErr
}

// walkReferences visits Reference.reference values (and Attachment.url values that name other entries) and
// replaces those resolve maps.
func walkReferences(v any, path string, resolve func(ref, path string) (string, bool)) {
	switch x := v.(type) {
	case *fhir.Object:
		isExtension := false
		for _, k := range x.Keys {
			if strings.HasPrefix(k, "value") {
				isExtension = true
			}
		}
		for i, k := range x.Keys {
			p := path + "." + k
			if s, ok := x.Vals[i].(string); ok && (k == "reference" || (k == "url" && !isExtension)) {
				if to, ok := resolve(s, p); ok {
					x.Vals[i] = to
				}
				continue
			}
			walkReferences(x.Vals[i], p, resolve)
		}
	case []any:
		for i, e := range x {
			walkReferences(e, path+"["+strconv.Itoa(i)+"]", resolve)
		}
	}
}

// execEntry performs one entry. tx is nil for reads in a batch.
func (s *Server) execEntry(ctx context.Context, tx *store.Tx, e *bentry, g fhir.Grant, acc *fhir.Access) error {
	check := s.checkCurrent(e.typ, g)
	switch e.method {
	case http.MethodPost:
		if e.matched != nil {
			e.status, e.stored, e.note = http.StatusOK, e.matched, "ifNoneExist matched an existing resource"
			return nil
		}
		opt := store.CreateOptions{ID: e.assigned}
		if e.assigned == "" && e.ifNone != "" {
			q, err := s.parseConditional(e.typ, e.ifNone, "ifNoneExist")
			if err != nil {
				return err
			}
			opt.IfNoneExist = q
		}
		w, err := tx.Create(e.typ, e.resource, opt, acc)
		if err != nil {
			return err
		}
		e.stored = w.Stored
		e.status, e.note = http.StatusCreated, "created"
		if w.Unchanged {
			e.status, e.note = http.StatusOK, "ifNoneExist matched an existing resource"
		}
	case http.MethodPut:
		var w *store.WriteResult
		var err error
		if e.id == "" {
			q, qerr := fhir.ParseQuery(e.typ, e.query, fhir.QueryOptions{Base: s.base, Loc: s.loc})
			if qerr != nil {
				return qerr
			}
			w, err = conditionalUpdate(tx, e.typ, q, e.resource, check, acc)
		} else {
			w, err = tx.Update(e.typ, e.id, e.resource, store.UpdateOptions{IfMatch: e.ifMatch, Check: check}, acc)
		}
		if err != nil {
			return err
		}
		e.stored = w.Stored
		e.status, e.note = http.StatusOK, "updated"
		if w.Created {
			e.status, e.note = http.StatusCreated, "created"
		}
	case http.MethodDelete:
		id := e.id
		if id == "" {
			q, err := fhir.ParseQuery(e.typ, e.query, fhir.QueryOptions{Base: s.base, Loc: s.loc})
			if err != nil {
				return err
			}
			found, err := tx.Match(q, acc, 2)
			if err != nil {
				return err
			}
			if len(found) > 1 {
				return fhir.Errorf(http.StatusPreconditionFailed, fhir.IssueMultiple, "the conditional delete criteria match more than one %s", e.typ)
			}
			if len(found) == 0 {
				e.status = http.StatusNoContent
				return nil
			}
			id = found[0].ID
		}
		w, err := tx.Delete(e.typ, id, store.DeleteOptions{IfMatch: e.ifMatch, Check: check}, acc)
		if err != nil {
			return err
		}
		e.stored, e.status = w.Stored, http.StatusNoContent
	default: // GET, HEAD
		return s.execRead(ctx, tx, e, acc)
	}
	return nil
}

func (s *Server) execRead(ctx context.Context, tx *store.Tx, e *bentry, acc *fhir.Access) error {
	switch {
	case e.version > 0:
		var st *store.Stored
		var err error
		if tx != nil {
			st, err = tx.VRead(e.typ, e.id, e.version, acc)
		} else {
			st, err = s.store.VRead(ctx, e.typ, e.id, e.version, acc)
		}
		if err != nil {
			return err
		}
		s.auditRead(ctx, "vread", st)
		e.status, e.body = http.StatusOK, st.Raw
	case e.id != "":
		var st *store.Stored
		var err error
		if tx != nil {
			st, err = tx.Read(e.typ, e.id, acc)
		} else {
			st, err = s.store.Read(ctx, e.typ, e.id, acc)
		}
		if err != nil {
			return err
		}
		s.auditRead(ctx, "read", st)
		e.status, e.body = http.StatusOK, st.Raw
	default:
		q, err := fhir.ParseQuery(e.typ, e.query, fhir.QueryOptions{Base: s.base, Loc: s.loc})
		if err != nil {
			return err
		}
		var page *store.Page
		if tx != nil {
			page, err = tx.Search(q, acc)
		} else {
			page, err = s.store.Search(ctx, q, acc)
		}
		if err != nil {
			return err
		}
		s.auditRead(ctx, "search-type", append(append([]*store.Stored{}, page.Matches...), page.Included...)...)
		body, err := s.searchBundle(q, page)
		if err != nil {
			return err
		}
		e.status, e.body = http.StatusOK, body
	}
	return nil
}
