package handlers

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/store"
	"github.com/gin-gonic/gin"
)

// everything answers GET /fhir/Patient/{id}/$everything: the patient's whole compartment (the Patient first;
// for a patient-confined token never the restricted records), with the shared resources it refers to
// (practitioners, organizations, medications …) as includes; _type, _since, _count, paging by next links.
func (s *Server) everything(c *gin.Context) {
	p := principal(c)
	if _, err := p.Require("Patient", auth.PermRead); err != nil {
		s.fail(c, err)
		return
	}
	id := c.Param("id")
	vals, err := s.searchParams(c)
	if err != nil {
		s.fail(c, err)
		return
	}
	var opt store.EverythingOptions
	for k, vs := range vals {
		v := strings.Join(vs, ",")
		switch k {
		case "_type":
			for _, t := range strings.Split(v, ",") {
				t = strings.TrimSpace(t)
				if !fhir.R4().IsResourceType(t) {
					s.fail(c, fhir.At(http.StatusBadRequest, fhir.IssueValue, "_type", "%q is not a resource type", t))
					return
				}
				if t != "Patient" && !fhir.InCompartment(t) {
					s.fail(c, fhir.At(http.StatusBadRequest, fhir.IssueValue, "_type", "%s is never in a patient's compartment", t))
					return
				}
				opt.Types = append(opt.Types, t)
			}
		case "_since":
			d, err := fhir.ParseDateTime("instant", v, s.loc)
			if err != nil {
				s.fail(c, fhir.At(http.StatusBadRequest, fhir.IssueValue, "_since", "_since is an instant such as 2026-01-01T00:00:00Z: %v", err))
				return
			}
			opt.Since, _ = d.Range()
		case "_count":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				s.fail(c, fhir.At(http.StatusBadRequest, fhir.IssueValue, "_count", "_count is a positive number"))
				return
			}
			opt.Count = n
		case "_cursor":
			opt.Cursor = v
		case "_format":
		default:
			s.fail(c, fhir.At(http.StatusBadRequest, fhir.IssueNotSupported, k, "Patient/$everything takes _type, _since, _count (and _cursor in its next links), not %s", k))
			return
		}
	}
	for _, t := range opt.Types {
		if t == "AuditEvent" {
			if _, err := s.materializeFor(c.Request.Context(), &fhir.Access{Patient: id}, nil); err != nil {
				s.fail(c, err)
				return
			}
		}
	}
	page, err := s.store.Everything(c.Request.Context(), id, opt, p.Access())
	if err != nil {
		s.fail(c, err)
		return
	}
	seen := map[string]bool{}
	for _, m := range page.Matches {
		seen[m.Type+"/"+m.ID] = true
	}
	for _, m := range page.Matches {
		for _, ref := range sharedRefs(m.Raw) {
			if seen[ref] {
				continue
			}
			seen[ref] = true
			typ, rid, _, _ := fhir.SplitReference(ref)
			if st, err := s.store.Read(c.Request.Context(), typ, rid, p.Access()); err == nil {
				page.Included = append(page.Included, st)
			}
		}
	}
	s.auditRead(c.Request.Context(), "operation", append(append([]*store.Stored{}, page.Matches...), page.Included...)...)
	self := s.base + "/Patient/" + id + "/$everything"
	links := [][2]string{{"self", self + query(vals, "")}}
	if page.Next != "" {
		links = append(links, [2]string{"next", self + query(vals, page.Next)})
	}
	b := fhir.NewBundle("searchset", -1, links)
	for _, m := range page.Matches {
		b.Add(fhir.Entry{FullURL: s.base + "/" + m.Type + "/" + m.ID, Raw: m.Raw, SearchMode: "match"})
	}
	for _, m := range page.Included {
		b.Add(fhir.Entry{FullURL: s.base + "/" + m.Type + "/" + m.ID, Raw: m.Raw, SearchMode: "include"})
	}
	if len(page.Warnings) > 0 {
		b.Add(fhir.Entry{Raw: fhir.OutcomeJSON(page.Warnings...), SearchMode: "outcome"})
	}
	s.writeJSON(c, http.StatusOK, b.Bytes())
}

func query(vals map[string][]string, cursor string) string {
	v := make(map[string][]string, len(vals))
	for k, x := range vals {
		if k != "_cursor" {
			v[k] = x
		}
	}
	if cursor != "" {
		v["_cursor"] = []string{cursor}
	}
	enc := url.Values(v).Encode()
	if enc == "" {
		return ""
	}
	return "?" + enc
}

// sharedRefs are the references of a resource to shared resources (not in any compartment).
func sharedRefs(raw []byte) []string {
	v, err := fhir.ParseJSON(raw)
	if err != nil {
		return nil
	}
	var out []string
	var walk func(any)
	walk = func(x any) {
		switch t := x.(type) {
		case *fhir.Object:
			for i, k := range t.Keys {
				if k == "reference" {
					if r, ok := t.Vals[i].(string); ok {
						if typ, _, _, ok := fhir.SplitReference(r); ok && fhir.Shared(typ) {
							out = append(out, r)
						}
					}
					continue
				}
				walk(t.Vals[i])
			}
		case []any:
			for _, e := range t {
				walk(e)
			}
		}
	}
	walk(v)
	return out
}
