// Package storetest opens real stores for tests: SQLite in a temporary directory always, and PostgreSQL in a
// fresh schema when CARTA_TEST_DATABASE_URL is set. There is no fake store: tests run against the databases users
// run.
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	"github.com/carta-fhir/carta/store"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx", for creating and dropping test schemas
)

// Backend is one database a test can run against.
type Backend struct {
	Name string
	// Config opens this backend (DataDir for SQLite, DatabaseURL for PostgreSQL).
	Config store.Config
}

// Backends returns SQLite, plus PostgreSQL when CARTA_TEST_DATABASE_URL is set. Each has its own empty database
// that is removed when the test ends.
func Backends(t testing.TB) []Backend {
	t.Helper()
	out := []Backend{{Name: "sqlite", Config: store.Config{DataDir: t.TempDir()}}}
	if u := os.Getenv("CARTA_TEST_DATABASE_URL"); u != "" {
		out = append(out, Backend{Name: "postgres", Config: store.Config{DatabaseURL: PostgresSchema(t, u)}})
	}
	return out
}

// PostgresSchema creates a fresh schema on the server at base and returns a URL whose connections use it. The
// schema is dropped when the test ends.
func PostgresSchema(t testing.TB, base string) string {
	t.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	schema := "t_" + hex.EncodeToString(b)
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		admin.Close()
		t.Fatalf("storetest: creating schema: %v", err)
	}
	t.Cleanup(func() {
		admin.Exec("DROP SCHEMA " + schema + " CASCADE")
		admin.Close()
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("storetest: bad CARTA_TEST_DATABASE_URL: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// Open opens a backend's store and closes it when the test ends.
func Open(t testing.TB, b Backend) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), b.Config)
	if err != nil {
		t.Fatalf("opening %s store: %v", b.Name, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Each runs fn once per backend, as subtests named after the backend.
func Each(t *testing.T, fn func(t *testing.T, s *store.Store)) {
	for _, b := range Backends(t) {
		t.Run(b.Name, func(t *testing.T) { fn(t, Open(t, b)) })
	}
}
