package handlers_test

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
	"testing"
)

// loadClinic writes a small record through a transaction whose entries refer to each other by urn:uuid.
func loadClinic(t *testing.T, e *env, tok string) map[string]string {
	t.Helper()
	bundle := `{"resourceType":"Bundle","type":"transaction","entry":[
	{"fullUrl":"urn:uuid:11111111-1111-4111-8111-111111111111","resource":{"resourceType":"Patient","name":[{"family":"Alvarez","given":["Ana"]}],"gender":"female","birthDate":"1980-04-02","identifier":[{"system":"urn:mrn","value":"A1"}]},"request":{"method":"POST","url":"Patient"}},
	{"fullUrl":"urn:uuid:22222222-2222-4222-8222-222222222222","resource":{"resourceType":"Practitioner","name":[{"family":"Osei"}]},"request":{"method":"POST","url":"Practitioner"}},
	{"fullUrl":"urn:uuid:33333333-3333-4333-8333-333333333333","resource":{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"2345-7","display":"Glucose"}]},"subject":{"reference":"urn:uuid:11111111-1111-4111-8111-111111111111"},"performer":[{"reference":"urn:uuid:22222222-2222-4222-8222-222222222222"}],"effectiveDateTime":"2024-03-01T09:30:00Z","valueQuantity":{"value":5.4,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}},"request":{"method":"POST","url":"Observation"}},
	{"fullUrl":"urn:uuid:44444444-4444-4444-8444-444444444444","resource":{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},"subject":{"reference":"urn:uuid:11111111-1111-4111-8111-111111111111"},"effectiveDateTime":"2024-05-01T09:30:00Z","valueQuantity":{"value":72,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}},"request":{"method":"POST","url":"Observation"}},
	{"fullUrl":"urn:uuid:55555555-5555-4555-8555-555555555555","resource":{"resourceType":"Binary","contentType":"text/plain","data":"SGVsbG8="},"request":{"method":"POST","url":"Binary"}},
	{"fullUrl":"urn:uuid:66666666-6666-4666-8666-666666666666","resource":{"resourceType":"DocumentReference","status":"current","type":{"coding":[{"system":"http://loinc.org","code":"34133-9"}]},"category":[{"coding":[{"system":"http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category","code":"clinical-note"}]}],"subject":{"reference":"urn:uuid:11111111-1111-4111-8111-111111111111"},"date":"2024-03-02T10:00:00Z","content":[{"attachment":{"contentType":"text/plain","url":"urn:uuid:55555555-5555-4555-8555-555555555555"}}]},"request":{"method":"POST","url":"DocumentReference"}},
	{"fullUrl":"urn:uuid:77777777-7777-4777-8777-777777777777","resource":{"resourceType":"Task","status":"ready","intent":"order","for":{"reference":"urn:uuid:11111111-1111-4111-8111-111111111111"},"focus":{"reference":"urn:uuid:66666666-6666-4666-8666-666666666666"},"authoredOn":"2024-03-03T00:00:00Z","restriction":{"period":{"end":"2024-04-02"}}},"request":{"method":"POST","url":"Task"}},
	{"fullUrl":"urn:uuid:88888888-8888-4888-8888-888888888888","resource":{"resourceType":"Provenance","target":[{"reference":"urn:uuid:33333333-3333-4333-8333-333333333333"}],"recorded":"2024-03-01T10:00:00Z","agent":[{"who":{"reference":"urn:uuid:22222222-2222-4222-8222-222222222222"}}]},"request":{"method":"POST","url":"Provenance"}},
	{"fullUrl":"urn:uuid:99999999-9999-4999-8999-999999999999","resource":{"resourceType":"Communication","status":"completed","subject":{"reference":"urn:uuid:11111111-1111-4111-8111-111111111111"},"about":[{"reference":"urn:uuid:77777777-7777-4777-8777-777777777777"}],"payload":[{"contentString":"Your request was received"}]},"request":{"method":"POST","url":"Communication"}}
	]}`
	r := e.must(200, "POST", "", tok, bundle)
	var resp struct {
		Type  string
		Entry []struct {
			Response struct{ Status, Location string }
		}
	}
	if err := jsonUnmarshal(r.body, &resp); err != nil || resp.Type != "transaction-response" || len(resp.Entry) != 9 {
		t.Fatalf("transaction response: %s", r.body)
	}
	ids := map[string]string{}
	for _, en := range resp.Entry {
		if en.Response.Status != "201 Created" {
			t.Fatalf("entry status %s", en.Response.Status)
		}
		parts := strings.Split(en.Response.Location, "/")
		ids[parts[0]+len2(ids, parts[0])] = parts[1]
	}
	return ids
}

// len2 numbers repeated types: Observation, Observation2.
func len2(m map[string]string, typ string) string {
	if _, ok := m[typ]; !ok {
		return ""
	}
	return "2"
}

func TestTransactionResolvesReferences(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		sys := e.system()
		ids := loadClinic(t, e, sys)
		obs := e.must(200, "GET", "/Observation/"+ids["Observation"], sys, "").json(t)
		if ref := obs.Object("subject").String("reference"); ref != "Patient/"+ids["Patient"] {
			t.Errorf("subject %q, want Patient/%s", ref, ids["Patient"])
		}
		doc := e.must(200, "GET", "/DocumentReference/"+ids["DocumentReference"], sys, "")
		if !strings.Contains(string(doc.body), `"url":"Binary/`+ids["Binary"]+`"`) {
			t.Errorf("attachment url not rewritten: %s", doc.body)
		}
		// One bad entry: the transaction fails, names the entry, and stores nothing.
		bad := `{"resourceType":"Bundle","type":"transaction","entry":[
			{"resource":{"resourceType":"Patient","id":"tx-ok"},"request":{"method":"PUT","url":"Patient/tx-ok"}},
			{"resource":{"resourceType":"Observation","code":{"text":"x"}},"request":{"method":"POST","url":"Observation"}}]}`
		r := e.must(400, "POST", "", sys, bad)
		if _, expr := outcome(t, r); expr != "Bundle.entry[1].resource.status" {
			t.Errorf("expression %q", expr)
		}
		e.must(404, "GET", "/Patient/tx-ok", sys, "")
		// A failure met while writing (stale If-Match) also rolls everything back.
		bad = `{"resourceType":"Bundle","type":"transaction","entry":[
			{"resource":{"resourceType":"Patient","id":"tx-ok"},"request":{"method":"PUT","url":"Patient/tx-ok"}},
			{"resource":{"resourceType":"Patient","id":"` + ids["Patient"] + `"},"request":{"method":"PUT","url":"Patient/` + ids["Patient"] + `","ifMatch":"W/\"5\""}}]}`
		r = e.must(412, "POST", "", sys, bad)
		if _, expr := outcome(t, r); expr != "Bundle.entry[1]" {
			t.Errorf("expression %q", expr)
		}
		e.must(404, "GET", "/Patient/tx-ok", sys, "")
		// A dangling urn:uuid reference is refused.
		r = e.must(400, "POST", "", sys, `{"resourceType":"Bundle","type":"transaction","entry":[
			{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"urn:uuid:00000000-0000-4000-8000-000000000000"}},"request":{"method":"POST","url":"Observation"}}]}`)
		if d, _ := outcome(t, r); !strings.Contains(d, "matches no entry") {
			t.Errorf("dangling reference: %s", d)
		}
		// Conditional references resolve to the one match.
		r = e.must(200, "POST", "", sys, `{"resourceType":"Bundle","type":"transaction","entry":[
			{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient?identifier=urn:mrn|A1"}},"request":{"method":"POST","url":"Observation"}}]}`)
		loc := strings.Split(strings.Split(string(r.body), `"location":"`)[1], `"`)[0]
		got := e.must(200, "GET", "/"+strings.Join(strings.Split(loc, "/")[:2], "/"), sys, "").json(t)
		if got.Object("subject").String("reference") != "Patient/"+ids["Patient"] {
			t.Errorf("conditional reference: %v", got.Object("subject"))
		}
		// A batch keeps going past a bad entry.
		r = e.must(200, "POST", "", sys, `{"resourceType":"Bundle","type":"batch","entry":[
			{"resource":{"resourceType":"Patient","id":"b1"},"request":{"method":"PUT","url":"Patient/b1"}},
			{"resource":{"resourceType":"Patient","gender":"x"},"request":{"method":"POST","url":"Patient"}},
			{"request":{"method":"GET","url":"Patient/b1"}}]}`)
		var br struct {
			Type  string
			Entry []struct {
				Resource map[string]any
				Response struct{ Status string }
			}
		}
		jsonUnmarshal(r.body, &br)
		if br.Type != "batch-response" || br.Entry[0].Response.Status != "201 Created" || br.Entry[1].Response.Status != "400 Bad Request" || br.Entry[2].Response.Status != "200 OK" || br.Entry[2].Resource["id"] != "b1" {
			t.Errorf("batch response: %s", r.body)
		}
	})
}

func TestSearchOverHTTP(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		sys := e.system()
		ids := loadClinic(t, e, sys)
		pid := ids["Patient"]
		for i := 0; i < 45; i++ {
			e.must(201, "PUT", fmt.Sprintf("/Patient/s%02d", i), sys, fmt.Sprintf(`{"resourceType":"Patient","id":"s%02d","name":[{"family":"Smith%d"}],"birthDate":"19%02d-01-01"}`, i, i%3, 40+i))
		}
		cases := []struct {
			typ, q string
			want   []string
		}{
			{"Patient", "family=alvarez", []string{"Patient/" + pid}},
			{"Patient", "name=ana&gender=female&birthdate=1980", []string{"Patient/" + pid}},
			{"Patient", "birthdate=ge1980-01-01&birthdate=lt1981", []string{"Patient/" + pid, "Patient/s40"}},
			{"Patient", "identifier=urn:mrn|A1", []string{"Patient/" + pid}},
			{"Observation", "patient=" + pid + "&category=laboratory", []string{"Observation/" + ids["Observation"]}},
			{"Observation", "subject=Patient/" + pid + "&code=http://loinc.org|8867-4", []string{"Observation/" + ids["Observation2"]}},
			{"Observation", "subject=" + e.base + "/Patient/" + pid + "&code=8867-4", []string{"Observation/" + ids["Observation2"]}},
			{"Observation", "subject=" + pid + "&code=8867-4", []string{"Observation/" + ids["Observation2"]}},
			{"Observation", "code:text=gluc", []string{"Observation/" + ids["Observation"]}},
			{"Observation", "value-quantity=gt70", []string{"Observation/" + ids["Observation2"]}},
			{"Observation", "value-quantity=5.4|http://unitsofmeasure.org|mmol/L", []string{"Observation/" + ids["Observation"]}},
			{"Observation", "date=2024-03", []string{"Observation/" + ids["Observation"]}},
			{"Observation", "subject:Patient.family=alvarez&category:not=laboratory", []string{"Observation/" + ids["Observation2"]}},
			{"Observation", "performer:Practitioner.name=osei", []string{"Observation/" + ids["Observation"]}},
			{"Patient", "_has:Observation:patient:code=2345-7", []string{"Patient/" + pid}},
			{"DocumentReference", "patient=" + pid + "&type=http://loinc.org|34133-9&category=clinical-note&date=ge2024-03-01", []string{"DocumentReference/" + ids["DocumentReference"]}},
			{"DocumentReference", "contenttype=text/plain", []string{"DocumentReference/" + ids["DocumentReference"]}},
			{"Task", "patient=" + pid + "&status=ready&due-date=le2024-04-30", []string{"Task/" + ids["Task"]}},
			{"Task", "focus=DocumentReference/" + ids["DocumentReference"], []string{"Task/" + ids["Task"]}},
			{"Task", "due-date=lt2024-04-01", nil},
			{"Communication", "about=Task/" + ids["Task"], []string{"Communication/" + ids["Communication"]}},
			{"Provenance", "target=Observation/" + ids["Observation"], []string{"Provenance/" + ids["Provenance"]}},
			{"Patient", "_id=" + pid + ",s01", []string{"Patient/" + pid, "Patient/s01"}},
		}
		for _, c := range cases {
			r := e.must(200, "GET", "/"+c.typ+"?"+c.q+"&_count=100", sys, "")
			got := bundleIDs(t, r, "match")
			sort.Strings(got)
			sort.Strings(c.want)
			if strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Errorf("%s?%s = %v, want %v", c.typ, c.q, got, c.want)
			}
			// POST _search gives the same result.
			vals, _ := url.ParseQuery(c.q + "&_count=100")
			p := e.do("POST", "/"+c.typ+"/_search", sys, vals.Encode(), "Content-Type: application/x-www-form-urlencoded")
			if p.status != 200 || strings.Join(sortedIDs(t, p), ",") != strings.Join(got, ",") {
				t.Errorf("POST _search %s?%s = %d %v", c.typ, c.q, p.status, sortedIDs(t, p))
			}
		}
		// Includes the issue names.
		inc := []struct{ q, want string }{
			{"/Task?_id=" + ids["Task"] + "&_include=Task:focus&_include=Task:patient", "DocumentReference/" + ids["DocumentReference"] + ",Patient/" + pid},
			{"/DocumentReference?_id=" + ids["DocumentReference"] + "&_include=DocumentReference:subject", "Patient/" + pid},
			{"/Observation?_id=" + ids["Observation"] + "&_revinclude=Provenance:target", "Provenance/" + ids["Provenance"]},
			{"/Task?_id=" + ids["Task"] + "&_revinclude=Communication:about", "Communication/" + ids["Communication"]},
			{"/Patient?_id=" + pid + "&_revinclude=Observation:subject&_include:iterate=Observation:performer", "Observation/" + ids["Observation"] + ",Observation/" + ids["Observation2"] + ",Practitioner/" + ids["Practitioner"]},
		}
		for _, c := range inc {
			r := e.must(200, "GET", c.q, sys, "")
			got := bundleIDs(t, r, "include")
			sort.Strings(got)
			want := strings.Split(c.want, ",")
			sort.Strings(want)
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("%s includes %v, want %s", c.q, got, c.want)
			}
		}
		// Paging: walk the absolute next links to the end, then back.
		r := e.must(200, "GET", "/Patient?family=smith&_sort=-birthdate&_count=10", sys, "")
		var seen []string
		pages := 0
		for {
			pages++
			seen = append(seen, bundleIDs(t, r, "match")...)
			next := link(t, r, "next")
			if next == "" {
				break
			}
			if !strings.HasPrefix(next, e.base+"/Patient?") {
				t.Fatalf("next link not absolute: %s", next)
			}
			r = e.must(200, "GET", next, sys, "")
		}
		if len(seen) != 45 || pages != 5 || seen[0] != "Patient/s44" || seen[44] != "Patient/s00" {
			t.Fatalf("paging: %d resources in %d pages, first %s", len(seen), pages, seen[0])
		}
		prev := link(t, r, "previous")
		if prev == "" {
			t.Fatal("last page has no previous link")
		}
		back := e.must(200, "GET", prev, sys, "")
		if got := bundleIDs(t, back, "match"); len(got) != 10 || got[0] != "Patient/s14" {
			t.Errorf("previous page: %v", got)
		}
		// Counting.
		r = e.must(200, "GET", "/Patient?family=smith&_summary=count", sys, "")
		if c := r.json(t); len(bundleIDs(t, r, "")) != 0 || !strings.Contains(string(r.body), `"total":45`) {
			t.Errorf("_summary=count: %v", c)
		}
		r = e.must(200, "GET", "/Patient?family=smith&_total=accurate&_count=2", sys, "")
		if !strings.Contains(string(r.body), `"total":45`) {
			t.Errorf("_total=accurate: %s", r.body[:200])
		}
		r = e.must(200, "GET", "/Patient?family=smith1&_count=100", sys, "")
		if !strings.Contains(string(r.body), `"total":15`) {
			t.Errorf("total of a one-page result: %s", r.body[:200])
		}
		// _elements and _summary.
		r = e.must(200, "GET", "/Patient/"+pid+"?_elements=name", sys, "")
		p := r.json(t)
		if _, has := p.Get("birthDate"); has || !strings.Contains(string(r.body), "SUBSETTED") {
			t.Errorf("_elements: %s", r.body)
		}
		r = e.must(200, "GET", "/Patient/"+pid+"?_summary=true", sys, "")
		if !strings.Contains(string(r.body), `"birthDate"`) || !strings.Contains(string(r.body), "SUBSETTED") {
			t.Errorf("_summary=true: %s", r.body)
		}
		// Unknown parameters: 400, or a warning under lenient handling.
		e.must(400, "GET", "/Patient?colour=blue", sys, "")
		r = e.must(200, "GET", "/Patient?colour=blue&family=alvarez", sys, "", "Prefer: handling=lenient")
		if !strings.Contains(string(r.body), `"mode":"outcome"`) || !strings.Contains(string(r.body), "colour") || len(bundleIDs(t, r, "match")) != 1 {
			t.Errorf("lenient: %s", r.body)
		}
		// _count is capped, not refused.
		r = e.must(200, "GET", "/Patient?_count=5000", sys, "")
		if !strings.Contains(link(t, r, "self"), "_count=5000") && len(bundleIDs(t, r, "match")) > 1000 {
			t.Errorf("_count not capped")
		}
		// Modifiers that are not supported are refused with their name.
		r = e.must(400, "GET", "/Observation?code:below=123", sys, "")
		if _, expr := outcome(t, r); expr != "code:below" {
			t.Errorf("expression %q", expr)
		}
	})
}

func sortedIDs(t *testing.T, r *resp) []string {
	got := bundleIDs(t, r, "match")
	sort.Strings(got)
	return got
}
