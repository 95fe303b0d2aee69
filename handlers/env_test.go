package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/handlers"
	"github.com/carta-fhir/carta/store"
	"github.com/carta-fhir/carta/store/storetest"
	"github.com/redis/go-redis/v9"
)

// env is a running server on a real store.
type env struct {
	t        *testing.T
	srv      *httptest.Server
	base     string // FHIR base
	store    *store.Store
	issuer   *auth.Issuer
	revoke   *store.Revocations
	keys     *auth.Keys
	verifier *auth.Verifier
	auth     *auth.Server
	h        *handlers.Server
}

func newEnv(t *testing.T, b storetest.Backend, opts ...func(*handlers.Config)) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t}
	var h http.Handler
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(e.srv.Close)
	e.base = e.srv.URL + "/fhir"
	b.Config.Base = e.base
	st := storetest.Open(t, b)
	keys, err := auth.LoadKeys(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := store.NewRevocations(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.store, e.revoke, e.keys = st, rev, keys
	// The authorization server keeps its short-lived state in Redis for the PostgreSQL backend when Redis is
	// configured (as replicas would), in process otherwise.
	var state auth.State = store.NewMemoryState()
	if u := os.Getenv("CARTA_TEST_REDIS_URL"); u != "" && b.Name == "postgres" {
		opt, err := redis.ParseURL(u)
		if err != nil {
			t.Fatal(err)
		}
		rdb := redis.NewClient(opt)
		t.Cleanup(func() { rdb.Close() })
		state = store.NewRedisState(rdb).Namespace(fmt.Sprint(time.Now().UnixNano()))
	}
	e.verifier = &auth.Verifier{Keys: keys, Issuer: e.srv.URL, Audience: e.base, Revoked: rev}
	e.auth = &auth.Server{Store: st, State: state, Issuer: &auth.Issuer{Keys: keys, Issuer: e.srv.URL, Audience: e.base}, Revocations: rev, BaseURL: e.srv.URL}
	cfg := handlers.Config{Store: st, Keys: keys, BaseURL: e.srv.URL, Version: "test", Verifier: e.verifier, Auth: e.auth}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := handlers.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h, e.h = srv, srv
	t.Cleanup(srv.Close)
	e.issuer = &auth.Issuer{Keys: keys, Issuer: e.srv.URL, Audience: e.base}
	return e
}

// each runs fn against a fresh server per backend.
func each(t *testing.T, fn func(t *testing.T, e *env)) {
	for _, b := range storetest.Backends(t) {
		t.Run(b.Name, func(t *testing.T) { fn(t, newEnv(t, b)) })
	}
}

func (e *env) tok(g auth.Grant) string {
	e.t.Helper()
	if g.TTL == 0 {
		g.TTL = time.Hour
	}
	if g.ClientID == "" {
		g.ClientID = "test"
	}
	s, _, err := e.issuer.Mint(g)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *env) system() string { return e.tok(auth.Grant{Subject: "sys", Scope: "system/*.cruds"}) }

func (e *env) patient(id string, scope string) string {
	return e.tok(auth.Grant{Subject: "Patient/" + id, Patient: id, FHIRUser: "Patient/" + id, Scope: scope})
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r *resp) json(t *testing.T) *fhir.Object {
	t.Helper()
	v, err := fhir.ParseJSON(r.body)
	if err != nil {
		t.Fatalf("response is not JSON (%d): %s", r.status, r.body)
	}
	o, ok := v.(*fhir.Object)
	if !ok {
		t.Fatalf("response is not an object: %s", r.body)
	}
	return o
}

// do sends a request; headers come as "Name: value" strings.
func (e *env) do(method, path, token, body string, headers ...string) *resp {
	e.t.Helper()
	u := path
	if !strings.HasPrefix(path, "http") {
		u = e.base + path
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return &resp{status: res.StatusCode, header: res.Header, body: b}
}

// must sends a request and fails the test unless the status is want.
func (e *env) must(want int, method, path, token, body string, headers ...string) *resp {
	e.t.Helper()
	r := e.do(method, path, token, body, headers...)
	if r.status != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.status, want, r.body)
	}
	return r
}

// outcome checks that a response is an OperationOutcome and returns its first diagnostics and expression.
func outcome(t *testing.T, r *resp) (diag, expr string) {
	t.Helper()
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Diagnostics string   `json:"diagnostics"`
			Expression  []string `json:"expression"`
		} `json:"issue"`
	}
	if err := json.Unmarshal(r.body, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("status %d without an OperationOutcome: %s", r.status, r.body)
	}
	if len(oo.Issue[0].Expression) > 0 {
		expr = oo.Issue[0].Expression[0]
	}
	return oo.Issue[0].Diagnostics, expr
}

// bundleIDs lists Type/id of a Bundle's entries with the given search mode ("" for all).
func bundleIDs(t *testing.T, r *resp, mode string) []string {
	t.Helper()
	var b struct {
		Entry []struct {
			Resource struct {
				ResourceType string `json:"resourceType"`
				ID           string `json:"id"`
			} `json:"resource"`
			Search struct {
				Mode string `json:"mode"`
			} `json:"search"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(r.body, &b); err != nil {
		t.Fatalf("not a Bundle: %s", r.body)
	}
	var out []string
	for _, e := range b.Entry {
		if mode == "" || e.Search.Mode == mode {
			if e.Resource.ResourceType != "" && e.Resource.ResourceType != "OperationOutcome" {
				out = append(out, e.Resource.ResourceType+"/"+e.Resource.ID)
			}
		}
	}
	return out
}

func link(t *testing.T, r *resp, rel string) string {
	t.Helper()
	var b struct {
		Link []struct{ Relation, URL string } `json:"link"`
	}
	json.Unmarshal(r.body, &b)
	for _, l := range b.Link {
		if l.Relation == rel {
			return l.URL
		}
	}
	return ""
}
