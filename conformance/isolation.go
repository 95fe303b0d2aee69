package conformance

import (
	"net/http"
	"net/url"
	"strings"
)

// The requirement of the isolation group: a patient-scoped token is confined to its patient (SMART's patient/
// scopes), and the HIPAA Privacy Rule's minimum necessary standard forbids disclosing another patient's records.
const isolationReq = "SMART App Launch 2.2.0 scopes-and-launch-context.html#patient-specific-scopes; 45 CFR 164.502(b)"

// bRecord is what the run knows of patient B: the Patient and B's DocumentReferences, read with B's token (or the
// system token), so that a leak can be recognized.
type bRecord struct {
	id      string
	family  string
	docs    []map[string]any
	binURLs []string
	known   map[string]bool // Type/id of B's resources
}

func (t *T) patientB() *bRecord {
	b := t.Config().PatientB
	if b.ID == "" {
		t.Skipf("needs patientB's id")
	}
	v, _ := t.remember("b-record", func() (any, error) {
		rec := &bRecord{id: b.ID, known: map[string]bool{"Patient/" + b.ID: true}}
		tok := b.Token
		if tok == "" {
			tok = t.Config().System.Token
		}
		if tok == "" {
			return rec, nil
		}
		if r := t.Get("Patient/"+b.ID, tok); r.Status == http.StatusOK {
			rec.family = family(r.JSON())
		}
		docs, _ := t.searchAll("DocumentReference?patient="+url.QueryEscape(b.ID)+"&_count=100", tok)
		rec.docs = docs
		for _, d := range docs {
			rec.known["DocumentReference/"+str(d, "id")] = true
			for _, c := range list(d, "content") {
				if u := str(c, "attachment", "url"); u != "" {
					rec.binURLs = append(rec.binURLs, u)
				}
			}
		}
		return rec, nil
	})
	return v.(*bRecord)
}

// leaks lists what of patient B a response body shows: B's Patient, a resource of B known to the run, or any
// reference to Patient/B.
func (b *bRecord) leaks(body map[string]any) []string {
	var out []string
	check := func(r map[string]any) {
		key := str(r, "resourceType") + "/" + str(r, "id")
		if b.known[key] {
			out = append(out, key)
			return
		}
		for _, ref := range refs(r) {
			if ref == "Patient/"+b.id || strings.HasSuffix(ref, "/Patient/"+b.id) {
				out = append(out, key+" (refers to Patient/"+b.id+")")
				return
			}
		}
	}
	if str(body, "resourceType") == "Bundle" {
		for _, r := range resources(body, "") {
			check(r)
		}
	} else if body != nil && str(body, "resourceType") != "OperationOutcome" {
		check(body)
	}
	return out
}

// deniedOrEmpty checks that a response as patient A shows nothing of B: a refusal (4xx), or a body without B.
func (t *T) deniedOrEmpty(b *bRecord, r *Resp, what string) {
	if r.Status >= 400 && r.Status < 500 {
		return
	}
	if r.Status != http.StatusOK {
		t.Failf("%s: status %d, want a refusal or a result without patient B", what, r.Status)
		return
	}
	if l := b.leaks(r.JSON()); len(l) > 0 {
		t.Failf("%s shows patient B's data: %v", what, l)
	}
}

// refused checks that a request for one of B's resources as patient A is refused (401, 403 or 404; never 200).
func (t *T) refused(r *Resp, what string) {
	t.Check(r.Status == http.StatusNotFound || r.Status == http.StatusForbidden || r.Status == http.StatusUnauthorized || r.Status == http.StatusGone,
		"%s: status %d, want 403 or 404", what, r.Status)
}

func (t *T) bDoc(b *bRecord) map[string]any {
	if len(b.docs) == 0 {
		t.Skipf("no DocumentReference of patient B is known (give patientB's token or a system token, and give B a document)")
	}
	return b.docs[0]
}

func isolationGroup() Group {
	iso := func(id, title, desc string, run func(t *T, tok string, b *bRecord)) Test {
		return Test{ID: id, Title: title, Description: desc, Requirement: isolationReq, Run: func(t *T) {
			_, tok := t.patientA()
			run(t, tok, t.patientB())
		}}
	}
	return Group{ID: "isolation", Title: "Patient isolation", Description: "With patient A's token, nothing of patient B is reachable by any path.", Tests: []Test{
		iso("isolation-read", "A cannot read B's Patient", "GET Patient/{B} with A's token → 403 or 404.",
			func(t *T, tok string, b *bRecord) { t.refused(t.Get("Patient/"+b.id, tok), "GET Patient/"+b.id) }),
		iso("isolation-read-document", "A cannot read B's documents", "GET DocumentReference/{one of B's} with A's token → 403 or 404.",
			func(t *T, tok string, b *bRecord) {
				d := t.bDoc(b)
				t.refused(t.Get("DocumentReference/"+str(d, "id"), tok), "GET DocumentReference/"+str(d, "id"))
			}),
		iso("isolation-search-by-id", "Searching for B by id finds nothing of B",
			"Patient?_id={B}, DocumentReference?patient={B}, Observation?patient={B}, DocumentReference?_id={B's} → refused or nothing of B.",
			func(t *T, tok string, b *bRecord) {
				qs := []string{"Patient?_id=" + url.QueryEscape(b.id), "DocumentReference?patient=" + url.QueryEscape(b.id),
					"Observation?patient=" + url.QueryEscape(b.id), "DocumentReference?subject=" + url.QueryEscape("Patient/"+b.id)}
				if len(b.docs) > 0 {
					qs = append(qs, "DocumentReference?_id="+url.QueryEscape(str(b.docs[0], "id")))
				}
				for _, q := range qs {
					t.deniedOrEmpty(b, t.Get(q, tok), "GET "+q)
				}
			}),
		iso("isolation-search-unfiltered", "A search without a patient parameter returns only A's data",
			"GET Patient, DocumentReference and Observation without parameters → nothing of B.",
			func(t *T, tok string, b *bRecord) {
				for _, q := range []string{"Patient", "DocumentReference?_count=200", "Observation?_count=200"} {
					t.deniedOrEmpty(b, t.Get(q, tok), "GET "+q)
				}
			}),
		iso("isolation-include", "_include and _revinclude do not reach into B",
			"Includes from A's searches and from searches naming B: DocumentReference:subject, Patient's revincluded DocumentReferences and Observations.",
			func(t *T, tok string, b *bRecord) {
				a := t.Config().PatientA.ID
				qs := []string{
					"DocumentReference?patient=" + url.QueryEscape(a) + "&_include=DocumentReference:subject",
					"Patient?_id=" + url.QueryEscape(a) + "&_revinclude=DocumentReference:subject&_revinclude=Observation:subject",
					"Patient?_id=" + url.QueryEscape(b.id) + "&_revinclude=DocumentReference:subject",
					"Patient?_revinclude=DocumentReference:subject",
				}
				if len(b.docs) > 0 {
					qs = append(qs, "DocumentReference?_id="+url.QueryEscape(str(b.docs[0], "id"))+"&_include=DocumentReference:subject")
				}
				for _, q := range qs {
					t.deniedOrEmpty(b, t.Get(q, tok), "GET "+q)
				}
			}),
		iso("isolation-history", "B's history is not reachable", "GET Patient/{B}/_history and DocumentReference/{B's}/_history, and the type histories → refused or nothing of B.",
			func(t *T, tok string, b *bRecord) {
				t.deniedOrEmpty(b, t.Get("Patient/"+b.id+"/_history", tok), "GET Patient/"+b.id+"/_history")
				if len(b.docs) > 0 {
					p := "DocumentReference/" + str(b.docs[0], "id") + "/_history"
					t.deniedOrEmpty(b, t.Get(p, tok), "GET "+p)
				}
				for _, p := range []string{"Patient/_history", "DocumentReference/_history"} {
					t.deniedOrEmpty(b, t.Get(p, tok), "GET "+p)
				}
			}),
		iso("isolation-everything", "B's $everything is not reachable", "GET Patient/{B}/$everything with A's token → refused or nothing of B.",
			func(t *T, tok string, b *bRecord) {
				t.deniedOrEmpty(b, t.Get("Patient/"+b.id+"/$everything", tok), "GET Patient/"+b.id+"/$everything")
			}),
		iso("isolation-compartment", "B's compartment is not reachable", "GET Patient/{B}/DocumentReference and Patient/{B}/* with A's token → refused or nothing of B.",
			func(t *T, tok string, b *bRecord) {
				for _, p := range []string{"Patient/" + b.id + "/DocumentReference", "Patient/" + b.id + "/Observation"} {
					t.deniedOrEmpty(b, t.Get(p, tok), "GET "+p)
				}
			}),
		iso("isolation-binary", "B's attachments are not reachable", "GET of each attachment URL of B's DocumentReferences with A's token → 401, 403 or 404.",
			func(t *T, tok string, b *bRecord) {
				t.bDoc(b)
				if len(b.binURLs) == 0 {
					t.Skipf("patient B's DocumentReferences have no attachment URL (their content is inline)")
				}
				for _, u := range b.binURLs {
					if !strings.HasPrefix(u, "http") {
						u = strings.TrimSuffix(t.Config().Base, "/") + "/" + strings.TrimPrefix(u, "/")
					}
					if !strings.HasPrefix(u, t.Config().Base) {
						t.Logf("not fetched (outside the FHIR base): %s", u)
						continue
					}
					t.refused(t.Get(u, tok), "GET "+u)
				}
			}),
		iso("isolation-post-search", "POST _search with B in the body finds nothing of B", "POST DocumentReference/_search and Patient/_search with B's id in the form body → refused or nothing of B.",
			func(t *T, tok string, b *bRecord) {
				for _, c := range []struct {
					path string
					form url.Values
				}{
					{"DocumentReference/_search", url.Values{"patient": {b.id}}},
					{"Patient/_search", url.Values{"_id": {b.id}}},
				} {
					t.deniedOrEmpty(b, t.Do(http.MethodPost, c.path, Req{Token: tok, Form: c.form}), "POST "+c.path+" "+c.form.Encode())
				}
			}),
		iso("isolation-chain", "Chained searches do not reach B", "DocumentReference?subject:Patient.name={B's family} and ?subject:Patient._id={B} → refused or nothing of B.",
			func(t *T, tok string, b *bRecord) {
				qs := []string{"DocumentReference?subject:Patient._id=" + url.QueryEscape(b.id)}
				if b.family != "" {
					qs = append(qs, "DocumentReference?subject:Patient.name="+url.QueryEscape(b.family))
				}
				for _, q := range qs {
					t.deniedOrEmpty(b, t.Get(q, tok), "GET "+q)
				}
			}),
	}}
}
