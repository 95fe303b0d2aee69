// Package store keeps FHIR resources, their history and their search indexes in SQLite (the embedded default) or
// PostgreSQL (for several replicas), behind one API. Every write stores the resource, its history row, its index
// rows and its compartment membership in one database transaction. Errors are *fhir.Error values (404, 409, 410,
// 412, ...) or internal errors; driver errors never reach callers as such.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/carta-fhir/carta/fhir"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	_ "modernc.org/sqlite" // pure-Go SQLite driver, registered as "sqlite"
)

// Config says where the data lives and how to interpret it.
type Config struct {
	// DataDir holds the SQLite database (carta.db) when DatabaseURL is empty.
	DataDir string
	// DatabaseURL, when set (postgres://...), selects PostgreSQL.
	DatabaseURL string
	// Base is the FHIR base URL; absolute references under it are indexed as local ones. When empty, the base
	// recorded by the last `carta serve` is used.
	Base string
	// Loc is the zone given to dates written without one (default UTC).
	Loc *time.Location
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives slow or failed background work; nil discards.
	Logger *slog.Logger
	// SyncFull makes SQLite fsync on every commit (survives power loss, not only process crashes), at a cost in
	// write throughput.
	SyncFull bool
	// CacheBytes bounds the read cache (SQLite only); 0 uses DefaultCacheBytes, a negative value disables it.
	CacheBytes int64
}

// DefaultCacheBytes is the default read cache budget: 100,000 typical resources.
const DefaultCacheBytes = 96 << 20

type dialect int

const (
	dialectSQLite dialect = iota
	dialectPostgres
)

// Store is the resource store. It is safe for concurrent use.
type Store struct {
	gdb     *gorm.DB
	db      *sql.DB
	d       dialect
	now     func() time.Time
	log     *slog.Logger
	indexer *fhir.Indexer
	// writeMu serializes writers within this process on SQLite, which has one writer at a time anyway; waiting
	// on a mutex is cheaper and fairer than SQLite's sleep-and-retry busy handler.
	writeMu sync.Mutex

	readStmt *sql.Stmt
	readPat  *sql.Stmt
	loadStmt *sql.Stmt
	genStmt  *sql.Stmt

	cache     *readCache
	hooks     map[string]Hook
	auditor   Auditor
	stopWatch context.CancelFunc
	watchDone chan struct{}

	// ridPool holds resource ids taken from the PostgreSQL sequence in blocks.
	ridMu   sync.Mutex
	ridPool []int64

	// SQLite group commit (commit.go); nil on PostgreSQL.
	jobs          chan *job
	closing       chan struct{}
	committerDone chan struct{}

	// stmts caches prepared statements of searches by their SQL text: searches of one shape share a statement,
	// so SQLite parses and plans them once.
	stmtMu sync.Mutex
	stmts  map[string]*sql.Stmt
}

// maxCachedStmts bounds the statement cache; past it, the cache starts over.
const maxCachedStmts = 512

// stmt returns a cached prepared statement for q (already rebound).
func (s *Store) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	s.stmtMu.Lock()
	st, ok := s.stmts[q]
	s.stmtMu.Unlock()
	if ok {
		return st, nil
	}
	st, err := s.db.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	s.stmtMu.Lock()
	defer s.stmtMu.Unlock()
	if prev, ok := s.stmts[q]; ok {
		st.Close()
		return prev, nil
	}
	if len(s.stmts) >= maxCachedStmts {
		for k, old := range s.stmts {
			old.Close()
			delete(s.stmts, k)
		}
	}
	if s.stmts == nil {
		s.stmts = map[string]*sql.Stmt{}
	}
	s.stmts[q] = st
	return st, nil
}

// cachedDB runs queries through the statement cache; it satisfies querier for reads outside transactions.
type cachedDB struct{ s *Store }

func (c cachedDB) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return c.s.db.ExecContext(ctx, q, args...)
}

func (c cachedDB) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	st, err := c.s.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

func (c cachedDB) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	st, err := c.s.stmt(ctx, q)
	if err != nil {
		return c.s.db.QueryRowContext(ctx, q, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// Open opens (and creates or migrates) the store described by cfg.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	s := &Store{now: cfg.Now, log: cfg.Logger}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	gcfg := &gorm.Config{
		Logger:                 logger.Discard,
		SkipDefaultTransaction: true,
		TranslateError:         true,
	}
	var err error
	if cfg.DatabaseURL != "" {
		if !strings.HasPrefix(cfg.DatabaseURL, "postgres://") && !strings.HasPrefix(cfg.DatabaseURL, "postgresql://") {
			return nil, fmt.Errorf("store: CARTA_DATABASE_URL must be a postgres:// URL, got %q", redact(cfg.DatabaseURL))
		}
		s.d = dialectPostgres
		s.gdb, err = gorm.Open(postgres.Open(cfg.DatabaseURL), gcfg)
		if err != nil {
			return nil, fmt.Errorf("store: connecting to PostgreSQL at %s: %w", redact(cfg.DatabaseURL), err)
		}
		s.db, err = s.gdb.DB()
		if err != nil {
			return nil, err
		}
		s.db.SetMaxOpenConns(4 * runtime.GOMAXPROCS(0))
		s.db.SetMaxIdleConns(4 * runtime.GOMAXPROCS(0))
		s.db.SetConnMaxIdleTime(5 * time.Minute)
	} else {
		if cfg.DataDir == "" {
			return nil, errors.New("store: no data directory and no database URL")
		}
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("store: creating data directory: %w", err)
		}
		sync := "NORMAL"
		if cfg.SyncFull {
			sync = "FULL"
		}
		dsn := "file:" + filepath.Join(cfg.DataDir, "carta.db") +
			"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(" + sync + ")" +
			"&_pragma=cache_size(-8000)&_pragma=temp_store(MEMORY)&_txlock=immediate"
		sqlDB, err := sql.Open("sqlite", dsn)
		if err != nil {
			return nil, fmt.Errorf("store: opening SQLite: %w", err)
		}
		n := max(4, 2*runtime.GOMAXPROCS(0))
		sqlDB.SetMaxOpenConns(n)
		sqlDB.SetMaxIdleConns(n)
		sqlDB.SetConnMaxLifetime(0)
		s.d = dialectSQLite
		s.db = sqlDB
		s.gdb, err = gorm.Open(sqlite.New(sqlite.Config{Conn: sqlDB}), gcfg)
		if err != nil {
			sqlDB.Close()
			return nil, fmt.Errorf("store: opening SQLite: %w", err)
		}
	}
	if err := s.db.PingContext(ctx); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("store: database unreachable: %w", err)
	}
	if err := s.migrate(ctx); err != nil {
		s.db.Close()
		return nil, err
	}
	base := cfg.Base
	if base == "" {
		base, _ = s.Setting(ctx, SettingFHIRBase)
	}
	loc := cfg.Loc
	if loc == nil {
		loc = time.UTC
	}
	s.indexer = &fhir.Indexer{Base: base, Loc: loc}
	if err := s.prepare(ctx); err != nil {
		s.db.Close()
		return nil, err
	}
	if s.d == dialectSQLite {
		s.startCommitter()
	}
	if s.d == dialectSQLite && cfg.CacheBytes >= 0 {
		budget := cfg.CacheBytes
		if budget == 0 {
			budget = DefaultCacheBytes
		}
		s.cache = newReadCache(budget)
		if err := s.genStmt.QueryRowContext(ctx).Scan(&s.cache.known); err != nil {
			s.db.Close()
			return nil, fmt.Errorf("store: reading the write generation: %w", err)
		}
		wctx, cancel := context.WithCancel(context.Background())
		s.stopWatch, s.watchDone = cancel, make(chan struct{})
		go func() {
			defer close(s.watchDone)
			s.watchGeneration(wctx)
		}()
	}
	return s, nil
}

// allocRID returns a new resource row id on PostgreSQL, taking ids from the sequence 64 at a time so a create
// does not spend a round trip on it. It queries through the caller's transaction: a second connection from the
// pool could be unavailable while the transaction holds a lock others wait for.
func (s *Store) allocRID(t *Tx) (int64, error) {
	s.ridMu.Lock()
	defer s.ridMu.Unlock()
	if len(s.ridPool) == 0 {
		rows, err := t.queryContext(`SELECT nextval(pg_get_serial_sequence('resources', 'rid')) FROM generate_series(1, 64)`)
		if err != nil {
			return 0, s.dbErr("allocating ids", err)
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return 0, err
			}
			s.ridPool = append(s.ridPool, id)
		}
		if err := rows.Err(); err != nil {
			return 0, s.dbErr("allocating ids", err)
		}
	}
	id := s.ridPool[0]
	s.ridPool = s.ridPool[1:]
	return id, nil
}

// redact hides the password in a database URL.
func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparseable URL)"
	}
	return p.Redacted()
}

// Close releases the database.
func (s *Store) Close() error {
	if s.jobs != nil {
		close(s.closing)
		<-s.committerDone
	}
	if s.stopWatch != nil {
		s.stopWatch()
		<-s.watchDone
	}
	if s.readStmt != nil {
		s.readStmt.Close()
		s.readPat.Close()
		s.loadStmt.Close()
		s.genStmt.Close()
	}
	s.stmtMu.Lock()
	for _, st := range s.stmts {
		st.Close()
	}
	s.stmts = nil
	s.stmtMu.Unlock()
	return s.db.Close()
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Postgres reports whether the store runs on PostgreSQL.
func (s *Store) Postgres() bool { return s.d == dialectPostgres }

// Indexer returns the index extractor the store uses (its base URL and zone).
func (s *Store) Indexer() *fhir.Indexer { return s.indexer }

// Gorm returns the gorm handle, for the small configuration tables other packages keep.
func (s *Store) Gorm() *gorm.DB { return s.gdb }

// rebind turns ? placeholders into $n for PostgreSQL.
func (d dialect) rebind(q string) string {
	if d != dialectPostgres || !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	inQuote := false
	for i := 0; i < len(q); i++ {
		c := q[i]
		if c == '\'' {
			inQuote = !inQuote
		}
		if c == '?' && !inQuote {
			n++
			b.WriteByte('$')
			b.WriteString(fmt.Sprint(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *Store) prepare(ctx context.Context) error {
	var err error
	s.readStmt, err = s.db.PrepareContext(ctx, s.d.rebind(`SELECT rid, version, updated, deleted, raw FROM resources WHERE type = ? AND id = ?`))
	if err != nil {
		return fmt.Errorf("store: preparing statements: %w", err)
	}
	s.readPat, err = s.db.PrepareContext(ctx, s.d.rebind(`SELECT r.rid, r.version, r.updated, r.deleted, r.raw,
		EXISTS (SELECT 1 FROM compartment c WHERE c.patient = ? AND c.rid = r.rid)
		FROM resources r WHERE r.type = ? AND r.id = ?`))
	if err != nil {
		return fmt.Errorf("store: preparing statements: %w", err)
	}
	agg := `GROUP_CONCAT(c.patient, ' ')`
	if s.d == dialectPostgres {
		agg = `STRING_AGG(c.patient, ' ')`
	}
	s.loadStmt, err = s.db.PrepareContext(ctx, s.d.rebind(`SELECT r.rid, r.version, r.updated, r.deleted, r.raw,
		(SELECT `+agg+` FROM compartment c WHERE c.rid = r.rid) FROM resources r WHERE r.type = ? AND r.id = ?`))
	if err != nil {
		return fmt.Errorf("store: preparing statements: %w", err)
	}
	s.genStmt, err = s.db.PrepareContext(ctx, `SELECT n FROM carta_generation WHERE id = 1`)
	if err != nil {
		return fmt.Errorf("store: preparing statements: %w", err)
	}
	return nil
}

func micros(t time.Time) int64 { return t.UnixMicro() }

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }
