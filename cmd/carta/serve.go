package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/handlers"
	"github.com/carta-fhir/carta/store"
	"github.com/redis/go-redis/v9"
)

// serveConfig is everything `carta serve` reads from flags and the environment.
type serveConfig struct {
	addr, data, baseURL, dbURL, redisURL string
	tlsCert, tlsKey                      string
	logLevel                             slog.Level
	maxBody                              int64
	loc                                  *time.Location
	syncFull, demo                       bool
	rights                               *rightsFlags
}

func parseServe(args []string, getenv func(string) string, stderr io.Writer) (*serveConfig, error) {
	fs := newFlags("serve", stderr)
	cfg := &serveConfig{}
	fs.StringVar(&cfg.addr, "addr", envOr(getenv, "CARTA_ADDR", "127.0.0.1:8080"), "address to listen on")
	fs.StringVar(&cfg.data, "data", envOr(getenv, "CARTA_DATA_DIR", "./carta-data"), "data directory for the embedded SQLite database and keys")
	fs.StringVar(&cfg.baseURL, "base-url", getenv("CARTA_BASE_URL"), "public URL of the server (default http://ADDR); the FHIR base is BASE/fhir")
	level := fs.String("log-level", envOr(getenv, "CARTA_LOG_LEVEL", "info"), "debug, info, warn or error")
	maxBody := fs.Int64("max-body", int64(handlers.DefaultMaxBody), "largest accepted request body in bytes")
	tz := fs.String("timezone", envOr(getenv, "CARTA_TIMEZONE", "UTC"), "zone for dates written without one (IANA name)")
	sync := fs.String("sqlite-sync", envOr(getenv, "CARTA_SQLITE_SYNC", "normal"), "SQLite durability: normal (survives a crash of the server) or full (also survives power loss)")
	fs.StringVar(&cfg.tlsCert, "tls-cert", getenv("CARTA_TLS_CERT"), "PEM certificate (chain) file: serve HTTPS")
	fs.StringVar(&cfg.tlsKey, "tls-key", getenv("CARTA_TLS_KEY"), "PEM private key file of --tls-cert")
	cfg.rights = addRightsFlags(fs, getenv)
	fs.BoolVar(&cfg.demo, "demo", false, "load demo records, demo logins (fresh passwords printed at start) and the demo app at /demo")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, usageErr("serve takes no arguments, got %q", fs.Arg(0))
	}
	cfg.dbURL, cfg.redisURL = getenv("CARTA_DATABASE_URL"), getenv("CARTA_REDIS_URL")
	if (cfg.tlsCert == "") != (cfg.tlsKey == "") {
		return nil, usageErr("--tls-cert and --tls-key go together")
	}
	if err := cfg.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return nil, usageErr("--log-level %q: use debug, info, warn or error", *level)
	}
	if *maxBody < 1024 {
		return nil, usageErr("--max-body must be at least 1024 bytes")
	}
	cfg.maxBody = *maxBody
	loc, err := time.LoadLocation(*tz)
	if err != nil {
		return nil, usageErr("--timezone %q: %v", *tz, err)
	}
	cfg.loc = loc
	switch *sync {
	case "normal":
	case "full":
		cfg.syncFull = true
	default:
		return nil, usageErr("--sqlite-sync must be normal or full")
	}
	if cfg.baseURL != "" {
		cfg.baseURL = strings.TrimSuffix(cfg.baseURL, "/")
		if !strings.HasPrefix(cfg.baseURL, "http://") && !strings.HasPrefix(cfg.baseURL, "https://") {
			return nil, usageErr("--base-url must start with http:// or https://")
		}
	}
	return cfg, nil
}

func serve(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseServe(args, getenv, stderr)
	if err != nil {
		return err
	}
	logs := newLogBuffer(stdout)
	defer logs.Flush()
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: cfg.logLevel}))
	go logs.run(ctx)

	var certs *certReloader
	if cfg.tlsCert != "" {
		if certs, err = newCertReloader(cfg.tlsCert, cfg.tlsKey); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.addr, err)
	}
	defer ln.Close()
	base := cfg.baseURL
	if base == "" {
		host, port, _ := net.SplitHostPort(ln.Addr().String())
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			host = "localhost"
		}
		scheme := "http://"
		if certs != nil {
			scheme = "https://"
		}
		base = scheme + net.JoinHostPort(host, port)
	}
	fhirBase := base + "/fhir"

	st, err := store.Open(ctx, store.Config{DataDir: cfg.data, DatabaseURL: cfg.dbURL, Base: fhirBase, Loc: cfg.loc, Logger: log, SyncFull: cfg.syncFull})
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.SetSetting(ctx, store.SettingFHIRBase, fhirBase); err != nil {
		return err
	}
	if err := st.SetSetting(ctx, store.SettingIssuer, base); err != nil {
		return err
	}
	keys, err := auth.LoadKeys(ctx, st)
	if err != nil {
		return err
	}
	var rdb *redis.Client
	if cfg.redisURL != "" {
		opt, err := redis.ParseURL(cfg.redisURL)
		if err != nil {
			return fmt.Errorf("CARTA_REDIS_URL: %w", err)
		}
		rdb = redis.NewClient(opt)
		defer rdb.Close()
		if err := rdb.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("the Redis server at %s does not answer: %w", opt.Addr, err)
		}
	}
	revocations, err := store.NewRevocations(ctx, st, rdb)
	if err != nil {
		return err
	}
	bg, stopBG := context.WithCancel(ctx)
	defer stopBG()
	go revocations.Run(bg, 2*time.Second)

	var state auth.State = store.NewMemoryState()
	if rdb != nil {
		state = store.NewRedisState(rdb)
	}
	issuer := &auth.Issuer{Keys: keys, Issuer: base, Audience: fhirBase}
	if cfg.demo && cfg.rights.contactName == "" && cfg.rights.contactPhone == "" {
		cfg.rights.contactName, cfg.rights.contactPhone = "Privacy Officer, Carta Demo Clinic", "+1 555 0100"
	}
	rules, jurisdictions, err := cfg.rights.rules(cfg.loc)
	if err != nil {
		return err
	}
	h, err := handlers.New(handlers.Config{
		Store: st, Keys: keys, BaseURL: base, Logger: log, MaxBody: cfg.maxBody, Loc: cfg.loc, Version: carta(),
		Verifier: &auth.Verifier{Keys: keys, Issuer: base, Audience: fhirBase, Revoked: revocations},
		Auth:     &auth.Server{Store: st, State: state, Issuer: issuer, Revocations: revocations, BaseURL: base},
		Demo:     cfg.demo,
		Rights:   rules,
	})
	if err != nil {
		return err
	}
	defer h.Close() // after the HTTP server stops: the last read records are written
	if err := handlers.InstallDefinitions(ctx, st); err != nil {
		return fmt.Errorf("installing the rights workflow's definitions: %w", err)
	}
	var demoPasswords map[string]string
	if cfg.demo {
		if demoPasswords, err = demoSetup(ctx, st, h, issuer, base); err != nil {
			return err
		}
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		WriteTimeout:      5 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if certs != nil {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get}
	}
	backend := "SQLite in " + cfg.data
	if certs != nil {
		backend = "HTTPS, " + backend
	}
	if cfg.dbURL != "" {
		backend = "PostgreSQL"
	}
	if rdb != nil {
		backend += " + Redis"
	}
	log.Info("serving", "fhir_base", fhirBase, "store", backend, "version", carta(), "jurisdictions", strings.Join(jurisdictions, ","))
	var banner strings.Builder
	fmt.Fprintf(&banner, `Carta %s is serving FHIR R4 at %s (%s)

  Get a token:     carta token --system --scope 'system/*.cruds'        (add --data %s if you changed it)
  First request:   curl -H "Authorization: Bearer $TOKEN" %s/Patient
  Capabilities:    curl %s/metadata
  Stop:            Ctrl-C (finishes requests in flight)
`, carta(), fhirBase, backend, cfg.data, fhirBase, fhirBase)
	if cfg.demo {
		fmt.Fprintf(&banner, `
  Demo: open %s/demo in a browser and press "Connect to Carta" (a standalone SMART launch with PKCE).
    Sign in as the patient:    demo-patient / %s
    or as her clinician:       demo-doctor  / %s   (finds a patient first: try Rivera)
  The app shows the token it got and curl commands to use it. Passwords change at every start.
  EHR launch:      carta launch --client %s --patient demo-patient --user Practitioner/demo-doctor   (prints a URL to open)
  Your own app:    carta clients add --id my-app --kind public --redirect-uri http://localhost:3000/callback
                   then point it at iss=%s (docs/auth.md)
`, base, demoPasswords["demo-patient"], demoPasswords["demo-doctor"], handlers.DemoClientID, fhirBase)
	}
	io.WriteString(stderr, banner.String()) // one write, so that it is not interleaved with anything

	errc := make(chan error, 1)
	go func() {
		if certs != nil {
			errc <- srv.ServeTLS(ln, "", "") // certificates from TLSConfig; HTTP/2 as well
			return
		}
		errc <- srv.Serve(ln)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing requests in flight")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown did not finish in time", "err", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}

// logBuffer batches log lines: one write per request line would cost a system call on the hot path. It flushes
// every 100 ms and when the server stops.
type logBuffer struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func newLogBuffer(w io.Writer) *logBuffer { return &logBuffer{w: bufio.NewWriterSize(w, 64<<10)} }

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.Write(p)
}

// Flush writes what is buffered.
func (b *logBuffer) Flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.w.Flush()
}

func (b *logBuffer) run(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			b.Flush()
			return
		case <-t.C:
			b.Flush()
		}
	}
}

// certReloader serves the TLS certificate from its files and picks up a renewed one (say from an ACME client)
// without a restart: it looks at the files at most once a minute.
type certReloader struct {
	certFile, keyFile string
	mu                sync.Mutex
	cert              *tls.Certificate
	modTime           time.Time
	checked           time.Time
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) load() error {
	fi, err := os.Stat(r.certFile)
	if err != nil {
		return fmt.Errorf("--tls-cert: %w", err)
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	r.cert, r.modTime = &c, fi.ModTime()
	return nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checked) > time.Minute {
		r.checked = now
		if fi, err := os.Stat(r.certFile); err == nil && !fi.ModTime().Equal(r.modTime) {
			// A half-written renewal fails to load; the current certificate stays until the next look.
			_ = r.load()
		}
	}
	return r.cert, nil
}
