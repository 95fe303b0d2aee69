package store

import (
	"context"
	"encoding/base64"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/carta-fhir/carta/fhir"
)

// EverythingOptions shape Patient/$everything.
type EverythingOptions struct {
	// Types, when set, limits the resource types returned (_type).
	Types []string
	// Since, when set, returns only resources changed at or after it (_since).
	Since time.Time
	// Count is the page size; Cursor continues a previous page.
	Count  int
	Cursor string
}

// Everything returns a page of the current resources in a patient's compartment, the Patient first, in the
// order they were first stored. acc decides which types may be read (a type the caller may not read is left
// out and named in the page's warnings); a patient-confined caller may only ask for its own patient, and never
// sees restricted resources (they are in no patient's compartment for it).
func (s *Store) Everything(ctx context.Context, patient string, opt EverythingOptions, acc *fhir.Access) (*Page, error) {
	if p := acc.PatientOnly(); p != "" && p != patient {
		return nil, fhir.NotFound("Patient", patient)
	}
	if _, err := s.Read(ctx, "Patient", patient, acc); err != nil {
		return nil, err
	}
	var after int64
	if opt.Cursor != "" {
		b, err := base64.RawURLEncoding.DecodeString(opt.Cursor)
		if err == nil {
			after, err = strconv.ParseInt(string(b), 10, 64)
		}
		if err != nil {
			return nil, fhir.Errorf(http.StatusBadRequest, fhir.IssueInvalid, "_cursor is not a cursor this server gave")
		}
	}
	if opt.Count <= 0 {
		opt.Count = 100
	}
	if opt.Count > fhir.MaxCount {
		opt.Count = fhir.MaxCount
	}
	page := &Page{Total: -1}
	var types []string
	var withFilters []string // types whose read grant carries a scope restriction: checked per resource
	candidates := opt.Types
	if len(candidates) == 0 {
		for _, t := range fhir.R4().ResourceTypes() {
			// The audit trail is not part of the record: it comes only when asked for (_type=AuditEvent).
			if (fhir.InCompartment(t) || t == "Patient") && t != "AuditEvent" {
				candidates = append(candidates, t)
			}
		}
	}
	for _, t := range candidates {
		g := acc.ReadGrant(t)
		if !g.Allowed {
			if len(opt.Types) > 0 {
				page.Warnings = append(page.Warnings, fhir.Issue{Severity: fhir.SeverityWarning, Code: fhir.IssueForbidden,
					Diagnostics: "the token's scopes do not allow reading " + t + "; those resources are left out"})
			}
			continue
		}
		types = append(types, t)
		if len(g.Filters) > 0 {
			withFilters = append(withFilters, t)
		}
	}
	if len(types) == 0 {
		return page, nil
	}
	sort.Strings(types)
	q := &sqlb{}
	q.w("SELECT r.rid, r.type, r.id, r.version, r.updated, r.raw FROM resources r WHERE r.deleted = 0 AND r.rid IN (SELECT c.rid FROM compartment c WHERE c.patient ")
	if acc.PatientOnly() != "" {
		q.w("= ")
		q.arg(patient)
	} else {
		// The provider's staff and systems also get the restricted records (psychotherapy notes and the like).
		q.w("IN ")
		q.list([]string{patient, fhir.RestrictedPrefix + patient})
	}
	q.w(") AND r.type IN ")
	q.list(types)
	if !opt.Since.IsZero() {
		q.w(" AND r.updated >= ")
		q.arg(micros(opt.Since))
	}
	q.w(" AND r.rid > ")
	q.arg(after)
	q.w(" ORDER BY r.rid LIMIT ")
	q.arg(opt.Count + 1)
	rows, err := s.scanStored(ctx, cachedDB{s}, q)
	if err != nil {
		return nil, err
	}
	if len(rows) > opt.Count {
		rows = rows[:opt.Count]
		page.Next = base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(rows[len(rows)-1].rid, 10)))
	}
	for _, st := range rows {
		if contains(withFilters, st.Type) {
			ok, err := s.matchesGrant(ctx, st.rid, st.Type, acc.ReadGrant(st.Type), acc)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
		}
		page.Matches = append(page.Matches, st)
	}
	// The Patient first on the first page.
	sort.SliceStable(page.Matches, func(i, j int) bool {
		return page.Matches[i].Type == "Patient" && page.Matches[j].Type != "Patient"
	})
	return page, nil
}
