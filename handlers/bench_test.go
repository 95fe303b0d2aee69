package handlers_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/handlers"
	"github.com/carta-fhir/carta/store/storetest"
)

// benchEnv is a server with 2,000 Patients (200 families of 10) on SQLite, driven in process so the numbers
// are the server's own cost per request (no network, no client).
func benchEnv(b *testing.B) (*env, http.Handler, string) {
	t := &testing.T{}
	be := storetest.Backends(b)[0]
	e := newEnv(t, be)
	e.t = t
	tok := e.system()
	var sb strings.Builder
	sb.WriteString(`{"resourceType":"Bundle","type":"transaction","entry":[`)
	for i := 0; i < 2000; i++ {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `{"resource":{"resourceType":"Patient","id":"p%d","identifier":[{"system":"urn:mrn","value":"%d"}],"name":[{"family":"Family%d","given":["Given%d"]}],"gender":"female","birthDate":"1970-01-%02d","address":[{"city":"Springfield","postalCode":"%05d"}]},"request":{"method":"PUT","url":"Patient/p%d"}}`, i, i, i%200, i, i%28+1, i, i)
	}
	sb.WriteString("]}")
	if r := e.do("POST", "", tok, sb.String()); r.status != 200 {
		b.Fatalf("seeding: %d %s", r.status, r.body[:200])
	}
	h, err := handlers.New(handlers.Config{Store: e.store, Keys: e.keys, BaseURL: e.srv.URL,
		Verifier: &auth.Verifier{Keys: e.keys, Issuer: e.srv.URL, Audience: e.base, Revoked: e.revoke}})
	if err != nil {
		b.Fatal(err)
	}
	return e, h, tok
}

func serve(b *testing.B, h http.Handler, method, path, tok, body string, want int) {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != want {
		b.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body.String())
	}
}

func BenchmarkRead(b *testing.B) {
	_, h, tok := benchEnv(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		serve(b, h, "GET", fmt.Sprintf("/fhir/Patient/p%d", i%2000), tok, "", 200)
	}
}

func BenchmarkSearchFamily(b *testing.B) {
	_, h, tok := benchEnv(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		serve(b, h, "GET", fmt.Sprintf("/fhir/Patient?family=Family%d", i%200), tok, "", 200)
	}
}

func BenchmarkCreate(b *testing.B) {
	_, h, tok := benchEnv(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		serve(b, h, "POST", "/fhir/Patient", tok, fmt.Sprintf(`{"resourceType":"Patient","identifier":[{"system":"urn:new","value":"%d"}],"name":[{"family":"New%d","given":["A"]}],"gender":"male","birthDate":"1980-02-03"}`, i, i), 201)
	}
}

func BenchmarkCreateParallel(b *testing.B) {
	_, h, tok := benchEnv(b)
	b.SetParallelism(5)
	var n atomicCounter
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.next()
			serve(b, h, "POST", "/fhir/Patient", tok, fmt.Sprintf(`{"resourceType":"Patient","identifier":[{"system":"urn:new","value":"%d"}],"name":[{"family":"New%d","given":["A"]}],"gender":"male","birthDate":"1980-02-03"}`, i, i), 201)
		}
	})
}

type atomicCounter struct{ n atomic.Int64 }

func (c *atomicCounter) next() int64 { return c.n.Add(1) }
