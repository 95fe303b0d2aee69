package handlers

import (
	"context"
	"net/url"
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

// An amendment dispute stays with the record (164.526(d)(4)-(5)): the request, the denial, the statement of
// disagreement and the rebuttal are DocumentReferences tagged with their dispute role that name the disputed
// records in context.related (and append to them when they are documents). A read of a disputed record points to
// them with a Link header; a search returning it returns them with it (search mode include); a disclosure outside
// the provider (a backend system's token, a directed copy) carries them as 164.526(d)(5) says.

// disputeIndex knows which records are disputed, so that reads and searches of undisputed ones cost a map
// lookup. It is reloaded from the store at most every two seconds (other replicas' disputes are seen within
// that), and this process's new disputes are added as they are written. Readers take no lock.
type disputeIndex struct {
	snap      atomic.Pointer[disputeSnap]
	reloading atomic.Bool
	mu        sync.Mutex // serializes writers of snap
}

type disputeSnap struct {
	targets map[string]bool
	loaded  time.Time
}

const disputeReload = 2 * time.Second

func (d *disputeIndex) add(refs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.snap.Load()
	next := &disputeSnap{targets: map[string]bool{}}
	if old != nil {
		for k := range old.targets {
			next.targets[k] = true
		}
		next.loaded = old.loaded
	}
	for _, r := range refs {
		next.targets[r] = true
	}
	d.snap.Store(next)
}

// disputed reports which of refs are disputed records.
func (s *Server) disputed(ctx context.Context, refs []string) []string {
	d := &s.disputes
	snap := d.snap.Load()
	if snap == nil || time.Since(snap.loaded) > disputeReload {
		if d.reloading.CompareAndSwap(false, true) {
			s.reloadDisputes(ctx)
			d.reloading.Store(false)
			snap = d.snap.Load()
		}
	}
	if snap == nil {
		return nil
	}
	var out []string
	for _, r := range refs {
		if snap.targets[r] {
			out = append(out, r)
		}
	}
	return out
}

func (s *Server) reloadDisputes(ctx context.Context) {
	targets := map[string]bool{}
	vals := url.Values{"_tag": {rights.SystemDisputeRole + "|"}, "_count": {"1000"}, "_elements": {"context"}}
	for {
		q, err := fhir.ParseQuery("DocumentReference", vals, fhir.QueryOptions{Base: s.base, Loc: s.loc})
		if err != nil {
			s.log.Error("loading disputes", "err", err)
			return
		}
		pg, err := s.store.Search(ctx, q, nil)
		if err != nil {
			s.log.Error("loading disputes", "err", err)
			return
		}
		for _, st := range pg.Matches {
			for _, r := range relatedOf(st.Raw) {
				targets[r] = true
			}
		}
		if pg.Next == "" {
			break
		}
		vals.Set("_cursor", pg.Next)
	}
	d := &s.disputes
	d.mu.Lock()
	d.snap.Store(&disputeSnap{targets: targets, loaded: time.Now()})
	d.mu.Unlock()
}

// relatedOf are the disputed records a dispute document names (context.related, Tasks aside).
func relatedOf(raw []byte) []string {
	v, err := fhir.ParseJSON(raw)
	if err != nil {
		return nil
	}
	o, _ := v.(*fhir.Object)
	var out []string
	for _, r := range objectsOf(o.Object("context"), "related") {
		if ref := r.String("reference"); ref != "" && !strings.HasPrefix(ref, "Task/") {
			out = append(out, ref)
		}
	}
	return out
}

// disputeLink is the search that finds a record's dispute documents.
func (s *Server) disputeLink(ref string) string {
	if strings.HasPrefix(ref, "DocumentReference/") {
		return s.base + "/DocumentReference?relatesto=" + url.QueryEscape(ref)
	}
	return s.base + "/DocumentReference?related=" + url.QueryEscape(ref)
}

// linkDisputes adds the Link header to a read of a disputed record.
func (s *Server) linkDisputes(c *gin.Context, st *store.Stored) {
	ref := st.Type + "/" + st.ID
	if len(s.disputed(c.Request.Context(), []string{ref})) > 0 {
		c.Header("Link", "<"+s.disputeLink(ref)+`>; rel="related"; title="amendment dispute documents (45 CFR 164.526(d)(4))"`)
	}
}

// disputeIncludes are the dispute documents of a search page's disputed matches the caller may see and should
// get: everything for the patient and the provider's staff; what 164.526(d)(5) sends along for a disclosure
// outside the provider (a backend system).
func (s *Server) disputeIncludes(ctx context.Context, p *auth.Principal, page *store.Page) ([]*store.Stored, error) {
	seen := map[string]bool{}
	var refs []string
	for _, m := range page.Matches {
		seen[m.Type+"/"+m.ID] = true
		refs = append(refs, m.Type+"/"+m.ID)
	}
	for _, m := range page.Included {
		seen[m.Type+"/"+m.ID] = true
	}
	disputed := s.disputed(ctx, refs)
	if len(disputed) == 0 {
		return nil, nil
	}
	var docs []*store.Stored
	if actorOf(p).Role == rights.RoleSystem {
		ids, err := s.disclosureDocs(storeLookup{s, ctx}, disputed)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			typ, rid, _, _ := fhir.SplitReference(id)
			if st, err := s.store.Read(ctx, typ, rid, p.Access()); err == nil {
				docs = append(docs, st)
			}
		}
	} else {
		vals := url.Values{"related": {strings.Join(disputed, ",")}, "_tag": {rights.SystemDisputeRole + "|"}, "_count": {"1000"}}
		q, err := fhir.ParseQuery("DocumentReference", vals, fhir.QueryOptions{Base: s.base, Loc: s.loc})
		if err != nil {
			return nil, err
		}
		pg, err := s.store.Search(ctx, q, p.Access())
		if err != nil {
			return nil, err
		}
		docs = pg.Matches
	}
	var out []*store.Stored
	for _, d := range docs {
		if !seen[d.Type+"/"+d.ID] {
			seen[d.Type+"/"+d.ID] = true
			out = append(out, d)
		}
	}
	return out, nil
}
