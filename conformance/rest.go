package conformance

import (
	"net/http"
	"net/url"
	"sort"
	"strings"
)

// isOutcome reports whether a response body is an OperationOutcome.
func isOutcome(r *Resp) bool { return r.ResourceType() == "OperationOutcome" }

// ids are the ids of resources, as Type/id.
func ids(rs []map[string]any) []string {
	var out []string
	for _, r := range rs {
		out = append(out, str(r, "resourceType")+"/"+str(r, "id"))
	}
	sort.Strings(out)
	return out
}

// searchAll follows next links from a search URL, at most 200 pages, and returns the matches and the pages read.
func (t *T) searchAll(first, token string) ([]map[string]any, int) {
	var all []map[string]any
	next := first
	pages := 0
	for next != "" && pages < 200 {
		r := t.Get(next, token)
		if r.Status != http.StatusOK || r.ResourceType() != "Bundle" {
			t.Fatalf("GET %s: status %d %s", next, r.Status, r.ResourceType())
		}
		all = append(all, resources(r.JSON(), "match")...)
		next = link(r.JSON(), "next")
		pages++
	}
	return all, pages
}

// aDocuments are patient A's DocumentReferences (as A sees them); the test skips when A has none.
func (t *T) aDocuments() []map[string]any {
	id, tok := t.patientA()
	v, _ := t.remember("a-docs", func() (any, error) {
		docs, _ := t.searchAll("DocumentReference?patient="+url.QueryEscape(id)+"&_count=100", tok)
		return docs, nil
	})
	docs, _ := v.([]map[string]any)
	if len(docs) == 0 {
		t.Skipf("patient A has no DocumentReference to search for")
	}
	return docs
}

func restGroup() Group {
	return Group{ID: "rest", Title: "FHIR R4 REST", Description: "The RESTful API behaves as FHIR R4 http.html says, with patient A's token.", Tests: []Test{
		{ID: "rest-read", Title: "Read returns the resource asked for",
			Description: "GET Patient/{A} → 200, a Patient whose id is A.",
			Requirement: fhirHTTP + "#read",
			Run: func(t *T) {
				id, tok := t.patientA()
				r := t.Get("Patient/"+id, tok)
				t.Check(r.Status == http.StatusOK, "status %d, want 200", r.Status)
				t.Check(r.ResourceType() == "Patient" && str(r.JSON(), "id") == id, "got %s/%s, want Patient/%s", r.ResourceType(), str(r.JSON(), "id"), id)
			}},
		{ID: "rest-read-etag", Title: "Read returns ETag and Last-Modified", Optional: true,
			Description: "The read carries ETag W/\"versionId\" equal to meta.versionId, and Last-Modified.",
			Requirement: fhirHTTP + "#read",
			Run: func(t *T) {
				id, tok := t.patientA()
				r := t.Get("Patient/"+id, tok)
				if r.Status != http.StatusOK {
					t.Fatalf("status %d", r.Status)
				}
				etag := r.Header.Get("ETag")
				t.Check(etag != "", "no ETag")
				if v := str(r.JSON(), "meta", "versionId"); v != "" && etag != "" {
					t.Check(etag == `W/"`+v+`"`, "ETag %s, want W/\"%s\" (meta.versionId)", etag, v)
				}
				t.Check(r.Header.Get("Last-Modified") != "", "no Last-Modified")
			}},
		{ID: "rest-read-unknown", Title: "Read of an unknown id is 404 with an OperationOutcome",
			Description: "GET Patient/{an id that does not exist} → 404.",
			Requirement: fhirHTTP + "#read",
			Run: func(t *T) {
				_, tok := t.patientA()
				r := t.Get("Patient/conformance-no-such-patient-8c1f", tok)
				t.Check(r.Status == http.StatusNotFound, "status %d, want 404", r.Status)
				t.Check(isOutcome(r), "the body is not an OperationOutcome")
			}},
		{ID: "rest-unknown-type", Title: "An unknown resource type is 404 (or 400) with an OperationOutcome",
			Description: "GET NotAResourceType/1 is refused with 404 or 400 and an OperationOutcome.",
			Requirement: fhirHTTP + "#read",
			Run: func(t *T) {
				_, tok := t.patientA()
				r := t.Get("NotAResourceType/1", tok)
				t.Check(r.Status == http.StatusNotFound || r.Status == http.StatusBadRequest, "status %d, want 404 or 400", r.Status)
				t.Check(isOutcome(r), "the body is not an OperationOutcome")
			}},
		{ID: "rest-vread", Title: "Vread returns the version asked for",
			Description: "GET Patient/{A}/_history/{meta.versionId} → 200 with that versionId (when vread is declared).",
			Requirement: fhirHTTP + "#vread",
			Run: func(t *T) {
				id, tok := t.patientA()
				if !t.declares("Patient", "vread") {
					t.Omitf("vread is not declared for Patient")
				}
				cur := t.Get("Patient/"+id, tok)
				v := str(cur.JSON(), "meta", "versionId")
				if v == "" {
					t.Fatalf("the Patient has no meta.versionId to vread")
				}
				r := t.Get("Patient/"+id+"/_history/"+v, tok)
				t.Check(r.Status == http.StatusOK && str(r.JSON(), "meta", "versionId") == v && str(r.JSON(), "id") == id,
					"status %d, versionId %q, want 200 and %q", r.Status, str(r.JSON(), "meta", "versionId"), v)
			}},
		{ID: "rest-searchset", Title: "A search answers with a searchset Bundle with a self link",
			Description: "GET DocumentReference?patient={A} → 200, Bundle.type searchset, a self link.",
			Requirement: fhirHTTP + "#search",
			Run: func(t *T) {
				id, tok := t.patientA()
				r := t.Get("DocumentReference?patient="+url.QueryEscape(id), tok)
				t.Check(r.Status == http.StatusOK, "status %d, want 200", r.Status)
				t.Check(r.ResourceType() == "Bundle" && str(r.JSON(), "type") == "searchset", "got %s of type %q, want a searchset Bundle", r.ResourceType(), str(r.JSON(), "type"))
				t.Check(link(r.JSON(), "self") != "", "no self link")
			}},
		{ID: "rest-search-post", Title: "Search by POST finds what search by GET finds",
			Description: "POST DocumentReference/_search with patient={A} as a form body returns the same resources as the GET.",
			Requirement: fhirHTTP + "#search",
			Run: func(t *T) {
				id, tok := t.patientA()
				get := t.Get("DocumentReference?patient="+url.QueryEscape(id)+"&_count=100", tok)
				post := t.Do(http.MethodPost, "DocumentReference/_search", Req{Token: tok, Form: url.Values{"patient": {id}, "_count": {"100"}}})
				t.Check(post.Status == http.StatusOK && str(post.JSON(), "type") == "searchset", "POST _search: status %d, type %q", post.Status, str(post.JSON(), "type"))
				g, p := ids(resources(get.JSON(), "match")), ids(resources(post.JSON(), "match"))
				t.Check(strings.Join(g, " ") == strings.Join(p, " "), "GET found %v, POST found %v", g, p)
			}},
		{ID: "rest-paging", Title: "Paging with _count walks to the end without losing or repeating anything",
			Description: "DocumentReference?patient={A}&_count=1, following next links, returns one match per page and the same resources as one large page.",
			Requirement: fhirHTTP + "#paging",
			Run: func(t *T) {
				id, tok := t.patientA()
				docs := t.aDocuments()
				if len(docs) < 2 {
					t.Skipf("patient A needs two DocumentReferences to page through")
				}
				paged, pages := t.searchAll("DocumentReference?patient="+url.QueryEscape(id)+"&_count=1", tok)
				t.Check(pages >= len(docs), "%d pages for %d resources at _count=1", pages, len(docs))
				got, want := ids(paged), ids(docs)
				t.Check(strings.Join(got, " ") == strings.Join(want, " "), "pages gave %v, one page gave %v", got, want)
			}},
		{ID: "rest-format", Title: "_format=json and _format=application/fhir+json give JSON",
			Description: "GET Patient/{A}?_format=… → 200 JSON.",
			Requirement: fhirHTTP + "#parameters",
			Run: func(t *T) {
				id, tok := t.patientA()
				for _, f := range []string{"json", "application/fhir+json"} {
					r := t.Get("Patient/"+id+"?_format="+url.QueryEscape(f), tok)
					t.Check(r.Status == http.StatusOK && r.ResourceType() == "Patient" && strings.Contains(r.Header.Get("Content-Type"), "json"),
						"_format=%s: status %d, Content-Type %q", f, r.Status, r.Header.Get("Content-Type"))
				}
			}},
		{ID: "rest-not-acceptable", Title: "An unsupported Accept is 406",
			Description: "A server that does not declare XML answers Accept: application/fhir+xml with 406.",
			Requirement: fhirHTTP + "#mime-type",
			Run: func(t *T) {
				id, tok := t.patientA()
				for _, f := range list(t.capabilities(), "format") {
					if s, _ := f.(string); strings.Contains(s, "xml") {
						t.Omitf("the server declares XML")
					}
				}
				r := t.Do(http.MethodGet, "Patient/"+id, Req{Token: tok, Header: map[string]string{"Accept": "application/fhir+xml"}})
				t.Check(r.Status == http.StatusNotAcceptable, "status %d, want 406", r.Status)
			}},
		{ID: "rest-unsupported-media", Title: "An unsupported request Content-Type is 415",
			Description: "POST DocumentReference/_search with Content-Type text/plain → 415.",
			Requirement: fhirHTTP + "#mime-type",
			Run: func(t *T) {
				_, tok := t.patientA()
				r := t.Do(http.MethodPost, "DocumentReference/_search", Req{Token: tok, ContentType: "text/plain", Body: []byte("patient=x")})
				t.Check(r.Status == http.StatusUnsupportedMediaType, "status %d, want 415", r.Status)
			}},
		{ID: "rest-search-error", Title: "A search that cannot run is a 4xx with an OperationOutcome",
			Description: "Patient?birthdate=not-a-date → 400 with an OperationOutcome.",
			Requirement: fhirHTTP + "#search",
			Run: func(t *T) {
				_, tok := t.patientA()
				r := t.Get("Patient?birthdate=not-a-date", tok)
				t.Check(r.Status >= 400 && r.Status < 500, "status %d, want 4xx", r.Status)
				t.Check(isOutcome(r), "the body is not an OperationOutcome")
			}},
		{ID: "rest-writes-undeclared", Title: "Writes the server does not declare are refused with 405",
			Description: "For create, update and delete on Patient not declared in the CapabilityStatement: 405 (or 401/403) with an OperationOutcome.",
			Requirement: fhirHTTP + "#summary",
			Run: func(t *T) {
				id, tok := t.patientA()
				tried := 0
				body := []byte(`{"resourceType":"Patient","id":"` + id + `"}`)
				for _, c := range []struct{ interaction, method, path string }{
					{"create", http.MethodPost, "Patient"}, {"update", http.MethodPut, "Patient/" + id}, {"delete", http.MethodDelete, "Patient/" + id},
				} {
					if t.declares("Patient", c.interaction) {
						continue
					}
					tried++
					var b []byte
					if c.method != http.MethodDelete {
						b = body
					}
					r := t.Do(c.method, c.path, Req{Token: tok, Body: b, ContentType: "application/fhir+json"})
					t.Check(r.Status == http.StatusMethodNotAllowed || r.Status == http.StatusForbidden || r.Status == http.StatusUnauthorized,
						"%s (not declared): status %d, want 405", c.interaction, r.Status)
				}
				if tried == 0 {
					t.Omitf("create, update and delete are all declared for Patient")
				}
			}},
		{ID: "rest-delete-gone", Title: "A deleted resource reads as 410 Gone",
			Description: "With the system token, create a Basic resource, delete it, read it: 410 (when create and delete are declared for Basic).",
			Requirement: fhirHTTP + "#delete",
			Run: func(t *T) {
				if !t.declares("Basic", "create") || !t.declares("Basic", "delete") {
					t.Omitf("create and delete are not both declared for Basic")
				}
				tok := t.Config().System.Token
				if tok == "" {
					t.Skipf("needs the system token to write")
				}
				r := t.Do(http.MethodPost, "Basic", Req{Token: tok, ContentType: "application/fhir+json",
					Body: []byte(`{"resourceType":"Basic","code":{"text":"carta conformance suite: created and deleted by rest-delete-gone"}}`)})
				id := str(r.JSON(), "id")
				if r.Status != http.StatusCreated || id == "" {
					t.Fatalf("create: status %d", r.Status)
				}
				d := t.Do(http.MethodDelete, "Basic/"+id, Req{Token: tok})
				t.Check(d.Status == 200 || d.Status == 202 || d.Status == 204, "delete: status %d", d.Status)
				g := t.Get("Basic/"+id, tok)
				t.Check(g.Status == http.StatusGone, "read after delete: status %d, want 410", g.Status)
			}},
	}}
}
