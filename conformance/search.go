package conformance

import (
	"net/http"
	"net/url"
	"strings"
)

const usCore = "US Core 6.1.0 CapabilityStatement-us-core-server.html"

// aPatient is patient A's Patient resource as A reads it.
func (t *T) aPatient() map[string]any {
	id, tok := t.patientA()
	r := t.Get("Patient/"+id, tok)
	if r.Status != http.StatusOK || r.ResourceType() != "Patient" {
		t.Fatalf("patient A cannot read their own Patient: status %d", r.Status)
	}
	return r.JSON()
}

// search runs a search as patient A and returns the matches; any failure ends the test.
func (t *T) search(query string) []map[string]any {
	_, tok := t.patientA()
	r := t.Get(query, tok)
	if r.Status != http.StatusOK || r.ResourceType() != "Bundle" {
		t.Fatalf("GET %s: status %d %s, want a Bundle", query, r.Status, r.ResourceType())
	}
	return resources(r.JSON(), "match")
}

func hasID(rs []map[string]any, typ, id string) bool {
	for _, r := range rs {
		if str(r, "resourceType") == typ && str(r, "id") == id {
			return true
		}
	}
	return false
}

// family is the first family name of a Patient.
func family(p map[string]any) string {
	for _, n := range list(p, "name") {
		if f := str(n, "family"); f != "" {
			return f
		}
	}
	return ""
}

// nameMatches is the FHIR string search on HumanName: any part starts with s, case- and accent-insensitively
// (accents are compared as they are: a server folding them matches more, never less).
func nameMatches(p map[string]any, s string) bool {
	s = strings.ToLower(s)
	for _, n := range list(p, "name") {
		parts := []string{str(n, "family"), str(n, "text")}
		for _, g := range list(n, "given") {
			gs, _ := g.(string)
			parts = append(parts, gs)
		}
		for _, pr := range list(n, "prefix") {
			ps, _ := pr.(string)
			parts = append(parts, ps)
		}
		for _, part := range parts {
			for w := range strings.FieldsSeq(strings.ToLower(part)) {
				if strings.HasPrefix(w, s) {
					return true
				}
			}
			if strings.HasPrefix(strings.ToLower(part), s) {
				return true
			}
		}
	}
	return false
}

// codings are a CodeableConcept's (or a list of them) system|code pairs.
func codings(v any) []string {
	var out []string
	var concepts []any
	if l, ok := v.([]any); ok {
		concepts = l
	} else if v != nil {
		concepts = []any{v}
	}
	for _, c := range concepts {
		for _, cd := range list(c, "coding") {
			out = append(out, str(cd, "system")+"|"+str(cd, "code"))
		}
	}
	return out
}

// subjectIs reports whether a resource's subject (or patient) is the patient.
func subjectIs(r map[string]any, patient string) bool {
	for _, k := range []string{"subject", "patient"} {
		ref := str(r, k, "reference")
		if ref == "Patient/"+patient || strings.HasSuffix(ref, "/Patient/"+patient) {
			return true
		}
	}
	return false
}

// firstWith is the first resource with a value at path.
func firstWith(rs []map[string]any, path ...any) map[string]any {
	for _, r := range rs {
		if walk(r, path...) != nil {
			return r
		}
	}
	return nil
}

func searchGroup() Group {
	return Group{ID: "search", Title: "The searches a patient app makes", Description: "Patient and DocumentReference searches a patient app runs with patient A's token, each result checked against the criteria.", Tests: []Test{
		{ID: "search-patient-id", Title: "Patient?_id={A} finds A and only A",
			Description: "Patient?_id={A} with A's token returns exactly Patient/A.",
			Requirement: usCore + "#patient", Run: func(t *T) {
				id, _ := t.patientA()
				rs := t.search("Patient?_id=" + url.QueryEscape(id))
				t.Check(len(rs) == 1 && hasID(rs, "Patient", id), "found %v, want Patient/%s alone", ids(rs), id)
			}},
		{ID: "search-patient-identifier", Title: "Patient?identifier=system|value finds A, and each result has that identifier",
			Description: "Patient?identifier={system}|{value} of A's first identifier returns A, and every result carries that identifier.",
			Requirement: usCore + "#patient", Run: func(t *T) {
				id, _ := t.patientA()
				p := t.aPatient()
				idf := firstWith([]map[string]any{p}, "identifier", 0, "value")
				if idf == nil {
					t.Skipf("patient A has no identifier")
				}
				sys, val := str(p, "identifier", 0, "system"), str(p, "identifier", 0, "value")
				q := val
				if sys != "" {
					q = sys + "|" + val
				}
				rs := t.search("Patient?identifier=" + url.QueryEscape(q))
				t.Check(hasID(rs, "Patient", id), "Patient/%s not found by its identifier %s", id, q)
				for _, r := range rs {
					found := false
					for _, i := range list(r, "identifier") {
						found = found || (str(i, "value") == val && (sys == "" || str(i, "system") == sys))
					}
					t.Check(found, "Patient/%s does not have identifier %s", str(r, "id"), q)
				}
			}},
		{ID: "search-patient-name", Title: "Patient?name={A's family name} finds A, and each result matches the name",
			Description: "Patient?name={A's family name} returns A, and every result has a name part starting with it.",
			Requirement: usCore + "#patient", Run: func(t *T) {
				id, _ := t.patientA()
				fam := family(t.aPatient())
				if fam == "" {
					t.Skipf("patient A has no family name")
				}
				rs := t.search("Patient?name=" + url.QueryEscape(fam))
				t.Check(hasID(rs, "Patient", id), "Patient/%s not found by name %q", id, fam)
				for _, r := range rs {
					t.Check(nameMatches(r, fam), "Patient/%s has no name starting with %q", str(r, "id"), fam)
				}
			}},
		{ID: "search-patient-birthdate-name", Title: "Patient?birthdate=…&name=… finds A, and each result matches both",
			Description: "Patient?birthdate={A's birth date}&name={A's family name} returns A, and every result matches both.",
			Requirement: usCore + "#patient", Run: func(t *T) {
				id, _ := t.patientA()
				p := t.aPatient()
				fam, bd := family(p), str(p, "birthDate")
				if fam == "" || bd == "" {
					t.Skipf("patient A needs a family name and a birth date")
				}
				rs := t.search("Patient?birthdate=" + url.QueryEscape(bd) + "&name=" + url.QueryEscape(fam))
				t.Check(hasID(rs, "Patient", id), "Patient/%s not found", id)
				for _, r := range rs {
					t.Check(strings.HasPrefix(str(r, "birthDate"), bd) && nameMatches(r, fam), "Patient/%s does not match birthdate %s and name %q", str(r, "id"), bd, fam)
				}
			}},
		{ID: "search-patient-gender-name", Title: "Patient?gender=…&name=… finds A, and each result matches both",
			Description: "Patient?gender={A's gender}&name={A's family name} returns A, and every result matches both.",
			Requirement: usCore + "#patient", Run: func(t *T) {
				id, _ := t.patientA()
				p := t.aPatient()
				fam, g := family(p), str(p, "gender")
				if fam == "" || g == "" {
					t.Skipf("patient A needs a family name and a gender")
				}
				rs := t.search("Patient?gender=" + url.QueryEscape(g) + "&name=" + url.QueryEscape(fam))
				t.Check(hasID(rs, "Patient", id), "Patient/%s not found", id)
				for _, r := range rs {
					t.Check(str(r, "gender") == g && nameMatches(r, fam), "Patient/%s does not match gender %s and name %q", str(r, "id"), g, fam)
				}
			}},
		{ID: "search-docref-patient", Title: "DocumentReference?patient={A} returns only A's documents, by id and by reference",
			Description: "Every result's subject is Patient/A; patient=Patient/{A} finds the same.",
			Requirement: usCore + "#documentreference", Run: func(t *T) {
				id, _ := t.patientA()
				docs := t.aDocuments()
				for _, d := range docs {
					t.Check(subjectIs(d, id), "DocumentReference/%s is not about Patient/%s", str(d, "id"), id)
				}
				byRef := t.search("DocumentReference?_count=100&patient=" + url.QueryEscape("Patient/"+id))
				t.Check(strings.Join(ids(byRef), " ") == strings.Join(ids(docs), " "), "patient=Patient/%s found %v, patient=%s found %v", id, ids(byRef), id, ids(docs))
			}},
		{ID: "search-docref-id", Title: "DocumentReference?_id=… finds that document alone",
			Description: "DocumentReference?_id={one of A's} returns exactly that document.",
			Requirement: usCore + "#documentreference", Run: func(t *T) {
				d := t.aDocuments()[0]
				rs := t.search("DocumentReference?_id=" + url.QueryEscape(str(d, "id")))
				t.Check(len(rs) == 1 && hasID(rs, "DocumentReference", str(d, "id")), "found %v", ids(rs))
			}},
		{ID: "search-docref-category", Title: "DocumentReference?patient=…&category=… returns A's documents of that category",
			Description: "DocumentReference?patient={A}&category={system}|{code} returns the document it was taken from, and every result is A's and of that category.",
			Requirement: usCore + "#documentreference", Run: func(t *T) {
				id, _ := t.patientA()
				d := firstWith(t.aDocuments(), "category", 0, "coding", 0, "code")
				if d == nil {
					t.Skipf("no document of patient A has a coded category")
				}
				cat := codings(d["category"])[0]
				rs := t.search("DocumentReference?patient=" + url.QueryEscape(id) + "&category=" + url.QueryEscape(cat))
				t.Check(hasID(rs, "DocumentReference", str(d, "id")), "DocumentReference/%s not found by category %s", str(d, "id"), cat)
				for _, r := range rs {
					t.Check(subjectIs(r, id) && contains(codings(r["category"]), cat), "DocumentReference/%s does not match patient %s and category %s", str(r, "id"), id, cat)
				}
			}},
		{ID: "search-docref-category-date", Title: "DocumentReference?patient=…&category=…&date=ge… returns A's documents of that category since that day",
			Description: "DocumentReference?patient={A}&category=…&date=ge{day} returns the document it was taken from, and every result is A's, of that category, dated that day or later.",
			Requirement: usCore + "#documentreference", Run: func(t *T) {
				id, _ := t.patientA()
				var d map[string]any
				for _, x := range t.aDocuments() {
					if len(codings(x["category"])) > 0 && len(str(x, "date")) >= 10 {
						d = x
						break
					}
				}
				if d == nil {
					t.Skipf("no document of patient A has both a coded category and a date")
				}
				cat, day := codings(d["category"])[0], str(d, "date")[:10]
				rs := t.search("DocumentReference?patient=" + url.QueryEscape(id) + "&category=" + url.QueryEscape(cat) + "&date=ge" + day)
				t.Check(hasID(rs, "DocumentReference", str(d, "id")), "DocumentReference/%s not found", str(d, "id"))
				for _, r := range rs {
					t.Check(subjectIs(r, id) && contains(codings(r["category"]), cat) && str(r, "date") >= day,
						"DocumentReference/%s (date %s) does not match category %s and date ≥ %s", str(r, "id"), str(r, "date"), cat, day)
				}
			}},
		{ID: "search-docref-type", Title: "DocumentReference?patient=…&type=… returns A's documents of that type",
			Description: "DocumentReference?patient={A}&type={system}|{code} returns the document it was taken from, and every result is A's and of that type.",
			Requirement: usCore + "#documentreference", Run: func(t *T) {
				id, _ := t.patientA()
				d := firstWith(t.aDocuments(), "type", "coding", 0, "code")
				if d == nil {
					t.Skipf("no document of patient A has a coded type")
				}
				typ := codings(d["type"])[0]
				rs := t.search("DocumentReference?patient=" + url.QueryEscape(id) + "&type=" + url.QueryEscape(typ))
				t.Check(hasID(rs, "DocumentReference", str(d, "id")), "DocumentReference/%s not found by type %s", str(d, "id"), typ)
				for _, r := range rs {
					t.Check(subjectIs(r, id) && contains(codings(r["type"]), typ), "DocumentReference/%s does not match type %s", str(r, "id"), typ)
				}
			}},
	}}
}
