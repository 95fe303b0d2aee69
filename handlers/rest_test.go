package handlers_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/handlers"
	"github.com/carta-fhir/carta/store/storetest"
)

// examplesLeftOut names the official examples the round-trip test skips, and why. It is empty: every R4 example in
// testdata/ is stored and served back with all its elements.
var examplesLeftOut = map[string]string{}

// TestExamplesRoundTrip stores every official R4 example with PUT and reads it back: all elements must survive
// (primitive extensions, contained resources, extensions, decimals as written), with only id and meta.versionId /
// meta.lastUpdated set by the server.
func TestExamplesRoundTrip(t *testing.T) {
	files, _ := filepath.Glob("../testdata/hl7-r4-examples/*.json")
	if len(files) < 200 {
		t.Fatalf("only %d examples found", len(files))
	}
	each(t, func(t *testing.T, e *env) {
		tok := e.system()
		for _, f := range files {
			name := filepath.Base(f)
			if why, skip := examplesLeftOut[name]; skip {
				t.Logf("left out %s: %s", name, why)
				continue
			}
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			sent, err := fhir.ParseResource(raw, "")
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			typ, id := sent.String("resourceType"), sent.String("id")
			r := e.do("PUT", "/"+typ+"/"+id, tok, string(raw))
			if r.status != 201 && r.status != 200 {
				t.Errorf("%s: PUT %d %s", name, r.status, r.body)
				continue
			}
			got := e.must(200, "GET", "/"+typ+"/"+id, tok, "")
			back := got.json(t)
			if v := back.Object("meta").String("versionId"); r.header.Get("ETag") != `W/"`+v+`"` {
				t.Errorf("%s: ETag %s, meta.versionId %s", name, r.header.Get("ETag"), v)
			}
			fhir.StripServerMeta(back)
			fhir.StripServerMeta(sent)
			if !fhir.Equal(back, sent) {
				t.Errorf("%s: served resource differs from the one sent\nsent %s\ngot  %s", name, fhir.AppendJSON(nil, sent), fhir.AppendJSON(nil, back))
			}
		}
		// Decimals keep their written precision byte for byte.
		r := e.must(200, "GET", "/Observation/decimal", tok, "")
		for _, d := range []string{`"value":1.0,`, `"value":1.00,`, `"value":1E-22,`, `"value":1000000000000000000,`} {
			if !strings.Contains(string(r.body), d) {
				t.Errorf("decimal example lost %s: %s", d, r.body)
			}
		}
	})
}

func TestErrorStatuses(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		sys := e.system()
		readOnly := e.tok(auth.Grant{Subject: "ro", Scope: "system/Patient.rs"})
		e.must(201, "PUT", "/Patient/p1", sys, `{"resourceType":"Patient","id":"p1","active":true}`)
		e.must(201, "PUT", "/Patient/gone", sys, `{"resourceType":"Patient","id":"gone"}`)
		e.must(204, "DELETE", "/Patient/gone", sys, "")
		e.must(201, "POST", "/Patient", sys, `{"resourceType":"Patient","identifier":[{"system":"urn:t","value":"dup"}]}`)
		e.must(201, "POST", "/Patient", sys, `{"resourceType":"Patient","identifier":[{"system":"urn:t","value":"dup"}]}`)
		cases := []struct {
			name, method, path, token, body string
			headers                         []string
			status                          int
			wantMsg, wantExpr               string
		}{
			{"MalformedJSON", "POST", "/Patient", sys, `{"resourceType":"Patient",`, nil, 400, "not valid JSON", ""},
			{"UnknownElement", "POST", "/Patient", sys, `{"resourceType":"Patient","nmae":[{"family":"x"}]}`, nil, 400, "unknown element", "Patient.nmae"},
			{"WrongType", "POST", "/Patient", sys, `{"resourceType":"Observation","status":"final","code":{"text":"x"}}`, nil, 400, "URL is for Patient", "resourceType"},
			{"IDMismatch", "PUT", "/Patient/p1", sys, `{"resourceType":"Patient","id":"p2"}`, nil, 400, "differs", "Patient.id"},
			{"IDMissing", "PUT", "/Patient/p1", sys, `{"resourceType":"Patient"}`, nil, 400, "must carry id", "Patient.id"},
			{"BadCode", "POST", "/Patient", sys, `{"resourceType":"Patient","gender":"M"}`, nil, 400, "required value set", "Patient.gender"},
			{"MissingRequired", "POST", "/Observation", sys, `{"resourceType":"Observation","code":{"text":"x"}}`, nil, 400, "status is required", "Observation.status"},
			{"UnknownSearchParam", "GET", "/Patient?nmae=x", sys, "", nil, 400, "is not a search parameter", "nmae"},
			{"BadDateParam", "GET", "/Patient?birthdate=yesterday", sys, "", nil, 400, "four-digit year", "birthdate"},
			{"NoToken", "GET", "/Patient/p1", "", "", nil, 401, "needs an access token", ""},
			{"GarbageToken", "GET", "/Patient/p1", "garbage", "", nil, 401, "not a well-formed JWT", ""},
			{"ScopeLacking", "POST", "/Patient", readOnly, `{"resourceType":"Patient"}`, nil, 403, "do not allow create of Patient", ""},
			{"OtherTypeForbidden", "GET", "/Observation?code=x", readOnly, "", nil, 403, "do not allow search of Observation", ""},
			{"UnknownID", "GET", "/Patient/nope", sys, "", nil, 404, "not known", ""},
			{"UnknownType", "GET", "/Patients/p1", sys, "", nil, 404, "not a resource type", ""},
			{"UnknownVersion", "GET", "/Patient/p1/_history/9", sys, "", nil, 404, "no version 9", ""},
			{"Patch", "PATCH", "/Patient/p1", sys, `[]`, nil, 405, "not supported", ""},
			{"AcceptXML", "GET", "/Patient/p1", sys, "", []string{"Accept: application/fhir+xml"}, 406, "FHIR JSON only", ""},
			{"FormatXML", "GET", "/Patient/p1?_format=xml", sys, "", nil, 406, "FHIR JSON only", "_format"},
			{"OtherFHIRVersion", "GET", "/Patient/p1", sys, "", []string{"Accept: application/fhir+json; fhirVersion=3.0"}, 406, "4.0.1 only", ""},
			{"TransactionTwiceSameResource", "POST", "", sys, `{"resourceType":"Bundle","type":"transaction","entry":[
				{"resource":{"resourceType":"Patient","id":"t1"},"request":{"method":"PUT","url":"Patient/t1"}},
				{"request":{"method":"DELETE","url":"Patient/t1"}}]}`, nil, 409, "may change a resource once", "Bundle.entry[1]"},
			{"Deleted", "GET", "/Patient/gone", sys, "", nil, 410, "has been deleted", ""},
			{"StaleIfMatch", "PUT", "/Patient/p1", sys, `{"resourceType":"Patient","id":"p1","active":false}`, []string{`If-Match: W/"7"`}, 412, "is at version 1", ""},
			{"IfNoneExistAmbiguous", "POST", "/Patient", sys, `{"resourceType":"Patient"}`, []string{"If-None-Exist: identifier=urn:t|dup"}, 412, "more than one", ""},
			{"TooLarge", "POST", "/Patient", sys, `{"resourceType":"Patient","text":{"status":"generated","div":"<div>` + strings.Repeat("x", 5000) + `</div>"}}`, nil, 413, "larger than the limit", ""},
			{"XMLBody", "POST", "/Patient", sys, `<Patient xmlns="http://hl7.org/fhir"/>`, []string{"Content-Type: application/fhir+xml"}, 415, "FHIR JSON only", ""},
			{"Invariant", "POST", "/Patient", sys, `{"resourceType":"Patient","name":[{"family":"x","period":{"start":"2020-02-01","end":"2020-01-01"}}]}`, nil, 422, "per-1", "Patient.name[0].period"},
		}
		small := newEnvWith(t, e, 4096)
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				target := e
				if c.status == 413 {
					target = small
				}
				r := target.do(c.method, c.path, c.token, c.body, c.headers...)
				if r.status != c.status {
					t.Fatalf("status %d, want %d: %s", r.status, c.status, r.body)
				}
				if ct := r.header.Get("Content-Type"); ct != "application/fhir+json; charset=utf-8" {
					t.Errorf("Content-Type %q", ct)
				}
				diag, expr := outcome(t, r)
				if !strings.Contains(diag, c.wantMsg) {
					t.Errorf("diagnostics %q do not say %q", diag, c.wantMsg)
				}
				if c.wantExpr != "" && expr != c.wantExpr {
					t.Errorf("expression %q, want %q", expr, c.wantExpr)
				}
				if c.status == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("401 without WWW-Authenticate: Bearer")
				}
			})
		}
		// Nothing already stored was lost by the refused writes.
		r := e.must(200, "GET", "/Patient/p1", sys, "")
		if r.json(t).Object("meta").String("versionId") != "1" || !strings.Contains(string(r.body), `"active":true`) {
			t.Errorf("p1 changed by refused writes: %s", r.body)
		}
		e.must(404, "GET", "/Patient/t1", sys, "")
	})
}

// newEnvWith starts a second server on the same store with a small body limit.
func newEnvWith(t *testing.T, e *env, maxBody int64) *env {
	small := *e
	h, err := handlers.New(handlers.Config{Store: e.store, Keys: e.keys, BaseURL: e.srv.URL, MaxBody: maxBody,
		Verifier: &auth.Verifier{Keys: e.keys, Issuer: e.srv.URL, Audience: e.base, Revoked: e.revoke}})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, h)
	small.srv = srv
	small.base = srv.URL + "/fhir"
	return &small
}

func TestHeadersAndPrefer(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		sys := e.system()
		r := e.must(201, "POST", "/Patient", sys, `{"resourceType":"Patient","id":"ignored","meta":{"versionId":"99","profile":["http://x/p"]},"active":true}`)
		p := r.json(t)
		id := p.String("id")
		if id == "ignored" || p.Object("meta").String("versionId") != "1" {
			t.Fatalf("server must assign id and version on create: %s", r.body)
		}
		if !strings.Contains(string(r.body), `"profile":["http://x/p"]`) {
			t.Errorf("client meta.profile lost: %s", r.body)
		}
		if loc := r.header.Get("Location"); loc != e.base+"/Patient/"+id+"/_history/1" {
			t.Errorf("Location %q", loc)
		}
		if r.header.Get("ETag") != `W/"1"` || r.header.Get("Last-Modified") == "" {
			t.Errorf("ETag %q Last-Modified %q", r.header.Get("ETag"), r.header.Get("Last-Modified"))
		}
		r = e.must(200, "PUT", "/Patient/"+id, sys, `{"resourceType":"Patient","id":"`+id+`","active":false}`, "Prefer: return=minimal", `If-Match: W/"1"`)
		if len(r.body) != 0 || r.header.Get("ETag") != `W/"2"` {
			t.Errorf("return=minimal: body %q etag %q", r.body, r.header.Get("ETag"))
		}
		r = e.must(200, "PUT", "/Patient/"+id, sys, `{"resourceType":"Patient","id":"`+id+`","active":true}`, "Prefer: return=OperationOutcome")
		if d, _ := outcome(t, r); !strings.Contains(d, "version 3") {
			t.Errorf("return=OperationOutcome: %s", d)
		}
		// An identical update makes no new version.
		r = e.must(200, "PUT", "/Patient/"+id, sys, `{"resourceType":"Patient","id":"`+id+`","active":true}`)
		if r.header.Get("ETag") != `W/"3"` {
			t.Errorf("identical update made a version: %s", r.header.Get("ETag"))
		}
		// Conditional read.
		e.must(304, "GET", "/Patient/"+id, sys, "", `If-None-Match: W/"3"`)
		// Update as create with a client id.
		r = e.must(201, "PUT", "/Patient/mine", sys, `{"resourceType":"Patient","id":"mine"}`)
		if r.header.Get("Location") != e.base+"/Patient/mine/_history/1" {
			t.Errorf("Location %q", r.header.Get("Location"))
		}
		// Conditional create: one match returns it, 200, nothing created.
		e.must(201, "POST", "/Patient", sys, `{"resourceType":"Patient","identifier":[{"system":"urn:c","value":"1"}]}`, "If-None-Exist: identifier=urn:c|1")
		r = e.must(200, "POST", "/Patient", sys, `{"resourceType":"Patient","identifier":[{"system":"urn:c","value":"1"}]}`, "If-None-Exist: identifier=urn:c|1")
		first := r.json(t).String("id")
		// Conditional update and delete.
		r = e.must(200, "PUT", "/Patient?identifier=urn:c|1", sys, `{"resourceType":"Patient","identifier":[{"system":"urn:c","value":"1"}],"active":true}`)
		if r.json(t).String("id") != first {
			t.Errorf("conditional update touched another resource")
		}
		e.must(204, "DELETE", "/Patient?identifier=urn:c|1", sys, "")
		e.must(410, "GET", "/Patient/"+first, sys, "")
		// Trailing slash and HEAD.
		e.must(200, "GET", "/Patient/mine/", sys, "")
		if r := e.must(200, "HEAD", "/Patient/mine", sys, ""); len(r.body) != 0 || r.header.Get("ETag") == "" {
			t.Errorf("HEAD: %q %q", r.body, r.header.Get("ETag"))
		}
		// Metadata is public and lists what routing does.
		r = e.must(200, "GET", "/metadata", "", "")
		cs := r.json(t)
		if cs.String("resourceType") != "CapabilityStatement" || cs.String("fhirVersion") != "4.0.1" {
			t.Errorf("metadata: %s", r.body[:200])
		}
		if !strings.Contains(string(r.body), `"name":"due-date"`) || !strings.Contains(string(r.body), `"type":"DocumentReference"`) {
			t.Errorf("metadata does not declare Task due-date or DocumentReference")
		}
		// History, newest first, with the deletion.
		r = e.must(200, "GET", "/Patient/"+first+"/_history", sys, "")
		var h struct {
			Type  string
			Total int
			Entry []struct {
				Request  struct{ Method string }
				Response struct{ Status string }
			}
		}
		if err := jsonUnmarshal(r.body, &h); err != nil || h.Type != "history" || h.Total != 3 || h.Entry[0].Request.Method != "DELETE" || h.Entry[2].Response.Status != "201 Created" {
			t.Errorf("history: %s", r.body)
		}
	})
}

func TestConcurrentWritesOverHTTP(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		sys := e.system()
		var wg sync.WaitGroup
		codes := make([]int, 50)
		for i := range codes {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				codes[i] = e.do("POST", "/Patient", sys, `{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"7"}]}`, "If-None-Exist: identifier=urn:mrn|7").status
			}(i)
		}
		wg.Wait()
		created := 0
		for _, c := range codes {
			switch c {
			case 201:
				created++
			case 200:
			default:
				t.Errorf("conditional create answered %d", c)
			}
		}
		r := e.must(200, "GET", "/Patient?identifier=urn:mrn|7&_total=accurate", sys, "")
		if n := len(bundleIDs(t, r, "match")); created != 1 || n != 1 {
			t.Fatalf("50 concurrent conditional creates made %d (stored %d); want exactly 1", created, n)
		}
		e.must(201, "PUT", "/Patient/race", sys, `{"resourceType":"Patient","id":"race"}`)
		var ok, pre int
		var mu sync.Mutex
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				r := e.do("PUT", "/Patient/race", sys, fmt.Sprintf(`{"resourceType":"Patient","id":"race","name":[{"family":"F%d"}]}`, i), `If-Match: W/"1"`)
				mu.Lock()
				defer mu.Unlock()
				switch r.status {
				case 200:
					ok++
				case 412:
					pre++
				default:
					t.Errorf("update answered %d: %s", r.status, r.body)
				}
			}(i)
		}
		wg.Wait()
		if ok != 1 || pre != 19 {
			t.Fatalf("20 If-Match updates: %d won, %d got 412", ok, pre)
		}
		r = e.must(200, "GET", "/Patient/race/_history", sys, "")
		if n := len(bundleIDs(t, r, "")); n != 2 {
			t.Fatalf("history has %d versions, want 2 (no lost update)", n)
		}
	})
}

func newServer(t *testing.T, h http.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// TestPanicBecomesOperationOutcome: a fault inside a handler answers 500 with an OperationOutcome, and the server
// keeps serving.
func TestPanicBecomesOperationOutcome(t *testing.T) {
	e := newEnv(t, storetest.Backends(t)[0])
	var logs strings.Builder
	broken, err := handlers.New(handlers.Config{Store: nil, Keys: e.keys, BaseURL: e.srv.URL, Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
		Verifier: &auth.Verifier{Keys: e.keys, Issuer: e.srv.URL, Audience: e.base}})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, broken)
	b := *e
	b.srv, b.base = srv, srv.URL+"/fhir"
	r := b.do("GET", "/Patient/x", e.system(), "")
	if r.status != 500 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if d, _ := outcome(t, r); strings.Contains(d, "nil pointer") || !strings.Contains(d, "internal server error") {
		t.Errorf("500 leaks or lacks a message: %q", d)
	}
	if !strings.Contains(logs.String(), `"msg":"panic"`) || !strings.Contains(logs.String(), "stack") {
		t.Errorf("panic not logged: %s", logs.String())
	}
	if r := b.do("GET", "/metadata", "", ""); r.status != 200 {
		t.Errorf("server stopped serving after a panic: %d", r.status)
	}
}
