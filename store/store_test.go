package store_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/store"
	"github.com/carta-fhir/carta/store/storetest"
)

func parse(t *testing.T, js string) *fhir.Object {
	t.Helper()
	o, err := fhir.ParseResource([]byte(js), "")
	if err != nil {
		t.Fatalf("parse %s: %v", js, err)
	}
	return o
}

func query(t *testing.T, typ, qs string) *fhir.Query {
	t.Helper()
	v, err := url.ParseQuery(qs)
	if err != nil {
		t.Fatal(err)
	}
	q, err := fhir.ParseQuery(typ, v, fhir.QueryOptions{Now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatalf("query %s?%s: %v", typ, qs, err)
	}
	return q
}

func status(err error) int {
	if fe, ok := fhir.AsError(err); ok {
		return fe.Status
	}
	return 0
}

func ids(p *store.Page) []string {
	var out []string
	for _, m := range p.Matches {
		out = append(out, m.ID)
	}
	return out
}

var ctx = context.Background()

func TestParamIDsAreUnique(t *testing.T) {
	seen := map[int64]string{}
	for _, typ := range fhir.R4().ResourceTypes() {
		for _, p := range fhir.Params().For(typ) {
			k := typ + "." + p.Code
			id := store.ParamID(typ, p.Code)
			if prev, dup := seen[id]; dup && prev != k {
				t.Fatalf("ParamID collision: %s and %s", prev, k)
			}
			seen[id] = k
		}
	}
}

func TestCRUD(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		body := `{"resourceType":"Patient","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1974-12-25T14:35:45-05:00"}]},"birthDate":"1974-12-25","name":[{"family":"Chalmers","given":["Peter"]}],"extension":[{"url":"http://x","valueDecimal":1.50}],"contained":[{"resourceType":"Organization","id":"o1","name":"C"}],"managingOrganization":{"reference":"#o1"}}`
		w, err := s.Create(ctx, "Patient", parse(t, body), store.CreateOptions{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !w.Created || w.Version != 1 {
			t.Fatalf("create: %+v", w)
		}
		got, err := s.Read(ctx, "Patient", w.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		back := parse(t, string(got.Raw))
		if back.String("id") != w.ID || back.Object("meta").String("versionId") != "1" {
			t.Fatalf("served %s", got.Raw)
		}
		fhir.StripServerMeta(back)
		back.Delete("id")
		if !fhir.Equal(back, parse(t, body)) {
			t.Fatalf("lost data:\n sent %s\n got  %s", body, got.Raw)
		}
		if !strings.Contains(string(got.Raw), `"valueDecimal":1.50`) {
			t.Fatalf("decimal not kept as written: %s", got.Raw)
		}

		// Identical update: no new version.
		same, err := s.Update(ctx, "Patient", w.ID, parse(t, string(got.Raw)), store.UpdateOptions{}, nil)
		if err != nil || !same.Unchanged || same.Version != 1 {
			t.Fatalf("identical update: %+v %v", same, err)
		}
		upd := strings.Replace(string(got.Raw), "Chalmers", "Chalmers-Smith", 1)
		u, err := s.Update(ctx, "Patient", w.ID, parse(t, upd), store.UpdateOptions{IfMatch: "1"}, nil)
		if err != nil || u.Version != 2 || u.Created {
			t.Fatalf("update: %+v %v", u, err)
		}
		if _, err := s.Update(ctx, "Patient", w.ID, parse(t, upd), store.UpdateOptions{IfMatch: "1"}, nil); status(err) != 412 {
			t.Fatalf("stale If-Match: %v", err)
		}
		v1, err := s.VRead(ctx, "Patient", w.ID, 1, nil)
		if err != nil || !strings.Contains(string(v1.Raw), `"Chalmers"`) {
			t.Fatalf("vread 1: %v %s", err, v1.Raw)
		}
		p := mustSearch(t, s, "Patient", "family=chalmers-s", nil)
		if len(p.Matches) != 1 {
			t.Fatalf("search after update: %v", ids(p))
		}
		if _, err := s.Delete(ctx, "Patient", w.ID, store.DeleteOptions{}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Read(ctx, "Patient", w.ID, nil); status(err) != 410 {
			t.Fatalf("read after delete: %v", err)
		}
		if p := mustSearch(t, s, "Patient", "family=chalmers", nil); len(p.Matches) != 0 {
			t.Fatalf("deleted resource still found")
		}
		h, err := s.History(ctx, "Patient", w.ID, store.HistoryOptions{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(h.Entries) != 3 || !h.Entries[0].Deleted || h.Entries[0].Version != 3 || h.Entries[2].Version != 1 {
			t.Fatalf("history: %+v", h.Entries)
		}
		// Update after delete re-creates (201).
		r, err := s.Update(ctx, "Patient", w.ID, parse(t, upd), store.UpdateOptions{}, nil)
		if err != nil || !r.Created || r.Version != 4 {
			t.Fatalf("resurrect: %+v %v", r, err)
		}
		if _, err := s.Read(ctx, "Patient", "nope", nil); status(err) != 404 {
			t.Fatalf("missing: %v", err)
		}
	})
}

func mustSearch(t *testing.T, s *store.Store, typ, qs string, acc *fhir.Access) *store.Page {
	t.Helper()
	p, err := s.Search(ctx, query(t, typ, qs), acc)
	if err != nil {
		t.Fatalf("search %s?%s: %v", typ, qs, err)
	}
	return p
}

func TestSearchAndPaging(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		for i := 0; i < 25; i++ {
			g := "male"
			if i%2 == 1 {
				g = "female"
			}
			body := fmt.Sprintf(`{"resourceType":"Patient","id":"p%02d","gender":"%s","birthDate":"19%02d-06-15","name":[{"family":"Fam%02d","given":["Ann"]}],"identifier":[{"system":"urn:s","value":"v%d"}]}`, i, g, 50+i, i%5, i)
			if _, err := s.Update(ctx, "Patient", fmt.Sprintf("p%02d", i), parse(t, body), store.UpdateOptions{}, nil); err != nil {
				t.Fatal(err)
			}
		}
		cases := []struct {
			qs   string
			want int
		}{
			{"family=fam01", 5},
			{"family:exact=Fam01", 5},
			{"family:exact=fam01", 0},
			{"name:contains=am0", 25},
			{"gender=female", 12},
			{"gender=http://hl7.org/fhir/administrative-gender|female", 12},
			{"gender=http://wrong|female", 0},
			{"gender:not=female", 13},
			{"identifier=urn:s|v3", 1},
			{"identifier=v3,v4", 2},
			{"identifier=|v3", 0},
			{"identifier=urn:s|", 25},
			{"identifier=urn:other|", 0},
			{"birthdate=gt1973-12-31", 1},
			{"birthdate=le1950-06-15", 1},
			{"birthdate=sa1973", 1},
			{"birthdate=eb1951", 1},
			{"birthdate=ap1960-06-15", 13},
			{"birthdate=1960", 1},
			{"birthdate=ge1970-01-01", 5},
			{"birthdate=lt1952", 2},
			{"birthdate=1950-06", 1},
			{"birthdate=ne1950-06-15", 24},
			{"family=fam01&gender=male", 2},
			{"_id=p01,p02", 2},
			{"address-city:missing=true", 25},
			{"gender:missing=false", 25},
		}
		for _, c := range cases {
			if p := mustSearch(t, s, "Patient", c.qs+"&_count=100", nil); len(p.Matches) != c.want {
				t.Errorf("%s: %d matches %v, want %d", c.qs, len(p.Matches), ids(p), c.want)
			}
		}
		// Walk pages sorted by birthdate descending, then walk back.
		var seen []string
		q := query(t, "Patient", "_sort=-birthdate&_count=7")
		var pages []*store.Page
		for {
			p, err := s.Search(ctx, q, nil)
			if err != nil {
				t.Fatal(err)
			}
			pages = append(pages, p)
			seen = append(seen, ids(p)...)
			if p.Next == "" {
				break
			}
			q.Cursor = p.Next
		}
		if len(seen) != 25 || seen[0] != "p24" || seen[24] != "p00" || len(pages) != 4 {
			t.Fatalf("paging saw %v in %d pages", seen, len(pages))
		}
		q.Cursor = pages[3].Prev
		back, err := s.Search(ctx, q, nil)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(ids(back), ",") != strings.Join(ids(pages[2]), ",") || back.Prev == "" || back.Next == "" {
			t.Fatalf("previous page %v, want %v", ids(back), ids(pages[2]))
		}
		if p := mustSearch(t, s, "Patient", "gender=male&_total=accurate&_count=2", nil); p.Total != 13 || len(p.Matches) != 2 {
			t.Fatalf("total %d", p.Total)
		}
		if p := mustSearch(t, s, "Patient", "gender=male&_summary=count", nil); p.Total != 13 || len(p.Matches) != 0 {
			t.Fatalf("count %d %d", p.Total, len(p.Matches))
		}
	})
}

func TestConcurrentConditionalCreate(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		created := 0
		errs := 0
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res := parse(t, `{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"42"}]}`)
				w, err := s.Create(ctx, "Patient", res, store.CreateOptions{IfNoneExist: query(t, "Patient", "identifier=urn:mrn|42")}, nil)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Logf("create: %v", err)
					errs++
					return
				}
				if w.Created {
					created++
				}
			}()
		}
		wg.Wait()
		p := mustSearch(t, s, "Patient", "identifier=urn:mrn|42", nil)
		if created != 1 || len(p.Matches) != 1 || errs != 0 {
			t.Fatalf("created %d, stored %d, errors %d", created, len(p.Matches), errs)
		}
	})
}

func TestConcurrentIfMatch(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		if _, err := s.Update(ctx, "Patient", "x", parse(t, `{"resourceType":"Patient","id":"x","active":true}`), store.UpdateOptions{}, nil); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok, pre := 0, 0
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				res := parse(t, fmt.Sprintf(`{"resourceType":"Patient","id":"x","name":[{"family":"N%d"}]}`, i))
				_, err := s.Update(ctx, "Patient", "x", res, store.UpdateOptions{IfMatch: "1"}, nil)
				mu.Lock()
				defer mu.Unlock()
				switch status(err) {
				case 0:
					ok++
				case 412:
					pre++
				default:
					t.Errorf("update: %v", err)
				}
			}(i)
		}
		wg.Wait()
		cur, _ := s.Read(ctx, "Patient", "x", nil)
		if ok != 1 || pre != 19 || cur.Version != 2 {
			t.Fatalf("ok %d, 412 %d, version %d", ok, pre, cur.Version)
		}
	})
}

func TestCompartmentIsolation(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		put := func(typ, id, body string) {
			t.Helper()
			if _, err := s.Update(ctx, typ, id, parse(t, body), store.UpdateOptions{}, nil); err != nil {
				t.Fatalf("%s/%s: %v", typ, id, err)
			}
		}
		put("Patient", "a", `{"resourceType":"Patient","id":"a","name":[{"family":"Alpha"}],"generalPractitioner":[{"reference":"Practitioner/dr"}]}`)
		put("Patient", "b", `{"resourceType":"Patient","id":"b","name":[{"family":"Beta"}]}`)
		put("Practitioner", "dr", `{"resourceType":"Practitioner","id":"dr","name":[{"family":"Who"}]}`)
		put("Observation", "oa", `{"resourceType":"Observation","id":"oa","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/a"},"performer":[{"reference":"Practitioner/dr"}]}`)
		put("Observation", "ob", `{"resourceType":"Observation","id":"ob","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/b"}}`)
		put("Observation", "oab", `{"resourceType":"Observation","id":"oab","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/a"},"focus":[{"reference":"Observation/ob"}],"hasMember":[{"reference":"Observation/ob"}]}`)
		put("Binary", "bb", `{"resourceType":"Binary","id":"bb","contentType":"text/plain","data":"aGk="}`)
		put("DocumentReference", "db", `{"resourceType":"DocumentReference","id":"db","status":"current","subject":{"reference":"Patient/b"},"content":[{"attachment":{"url":"Binary/bb"}}]}`)
		put("Provenance", "pb", `{"resourceType":"Provenance","id":"pb","target":[{"reference":"Observation/ob"}],"recorded":"2020-01-01T00:00:00Z","agent":[{"who":{"reference":"Practitioner/dr"}}]}`)
		a := &fhir.Access{Patient: "a"}
		for _, c := range []struct{ typ, id string }{{"Patient", "b"}, {"Observation", "ob"}, {"Binary", "bb"}, {"DocumentReference", "db"}, {"Provenance", "pb"}} {
			if _, err := s.Read(ctx, c.typ, c.id, a); status(err) != 404 {
				t.Errorf("patient a read %s/%s: %v", c.typ, c.id, err)
			}
			if _, err := s.VRead(ctx, c.typ, c.id, 1, a); status(err) != 404 {
				t.Errorf("patient a vread %s/%s: %v", c.typ, c.id, err)
			}
			if _, err := s.History(ctx, c.typ, c.id, store.HistoryOptions{}, a); status(err) != 404 {
				t.Errorf("patient a history %s/%s: %v", c.typ, c.id, err)
			}
		}
		for _, c := range []struct{ typ, id string }{{"Patient", "a"}, {"Observation", "oa"}, {"Practitioner", "dr"}} {
			if _, err := s.Read(ctx, c.typ, c.id, a); err != nil {
				t.Errorf("patient a read own %s/%s: %v", c.typ, c.id, err)
			}
		}
		checks := []struct{ typ, qs, want string }{
			{"Observation", "", "oa,oab"},
			{"Observation", "subject=Patient/b", ""},
			{"Observation", "patient=b", ""},
			{"Observation", "subject:Patient.name=beta", ""},
			{"Patient", "", "a"},
			{"Patient", "_id=b", ""},
			{"Patient", "_has:Observation:patient:status=final", "a"},
			{"Binary", "", ""},
			{"Provenance", "", ""},
		}
		for _, c := range checks {
			p := mustSearch(t, s, c.typ, c.qs, a)
			if got := strings.Join(ids(p), ","); got != c.want {
				t.Errorf("patient a %s?%s = %q, want %q", c.typ, c.qs, got, c.want)
			}
		}
		// Includes never reach B.
		p := mustSearch(t, s, "Observation", "_include=Observation:focus&_include=Observation:has-member&_include=Observation:subject&_revinclude=Provenance:target", a)
		for _, inc := range p.Included {
			if inc.ID == "ob" || inc.ID == "b" || inc.ID == "pb" {
				t.Errorf("include leaked %s/%s", inc.Type, inc.ID)
			}
		}
		// Without limits the same include finds them.
		p = mustSearch(t, s, "Observation", "_id=oab&_include=Observation:focus", nil)
		if len(p.Included) != 1 {
			t.Errorf("include for a system caller: %d", len(p.Included))
		}
		// B sees its own Binary through its DocumentReference and its Provenance.
		b := &fhir.Access{Patient: "b"}
		if _, err := s.Read(ctx, "Binary", "bb", b); err != nil {
			t.Errorf("patient b reading own binary: %v", err)
		}
		if _, err := s.Read(ctx, "Provenance", "pb", b); err != nil {
			t.Errorf("patient b reading provenance about own observation: %v", err)
		}
		h, err := s.History(ctx, "", "", store.HistoryOptions{Count: 100}, a)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range h.Entries {
			if e.ID == "b" || e.ID == "ob" || e.ID == "bb" || e.ID == "db" || e.ID == "pb" {
				t.Errorf("system history leaked %s/%s to patient a", e.Type, e.ID)
			}
		}
		// A patient may not write into another compartment.
		_, err = s.Create(ctx, "Observation", parse(t, `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/b"}}`), store.CreateOptions{}, a)
		if status(err) != 403 {
			t.Errorf("patient a writing into b's compartment: %v", err)
		}
		if _, err := s.Delete(ctx, "Observation", "ob", store.DeleteOptions{}, a); status(err) != 404 {
			t.Errorf("patient a deleting b's observation: %v", err)
		}
	})
}

var _ = errors.New

func contextWithCancel() (context.Context, context.CancelFunc) { return context.WithCancel(ctx) }
