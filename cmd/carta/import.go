package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/handlers"
)

// importCmd loads files through the same HTTP handler the server runs (in process, with a system token), so an
// import validates, indexes and resolves references exactly like a client's requests.
func importCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fset := newFlags("import", stderr)
	data := fset.String("data", envOr(getenv, "CARTA_DATA_DIR", "./carta-data"), "data directory of the server")
	if err := fset.Parse(args); err != nil {
		return err
	}
	if fset.NArg() == 0 {
		return usageErr("import needs files or directories (FHIR JSON resources or Bundles, .json, .ndjson, optionally .gz)")
	}
	files, err := collectFiles(fset.Args())
	if err != nil {
		return err
	}
	srv, err := openServer(ctx, *data, getenv)
	if err != nil {
		return err
	}
	defer srv.store.Close()
	h, err := handlers.New(handlers.Config{Store: srv.store, Keys: srv.keys, BaseURL: srv.issuer, Version: carta(),
		Verifier: &auth.Verifier{Keys: srv.keys, Issuer: srv.issuer, Audience: srv.fhirBase}})
	if err != nil {
		return err
	}
	defer h.Close()
	minter := &auth.Issuer{Keys: srv.keys, Issuer: srv.issuer, Audience: srv.fhirBase}
	var loaded, failedFiles, resources int
	start := time.Now()
	progress := func() {
		fmt.Fprintf(stderr, "\rimport: %d/%d files, %d resources written, %d files failed", loaded+failedFiles, len(files), resources, failedFiles)
	}
	for _, f := range files {
		if ctx.Err() != nil {
			break
		}
		tok, _, err := minter.Mint(auth.Grant{Subject: "carta-import", ClientID: "carta-import", Scope: "system/*.cruds", TTL: time.Hour})
		if err != nil {
			return err
		}
		n, err := importFile(ctx, h, tok, f)
		resources += n
		if err != nil {
			failedFiles++
			fmt.Fprintf(stderr, "\r\033[K%s: %v\n", f, err)
		} else {
			loaded++
		}
		progress()
	}
	fmt.Fprintf(stderr, "\n")
	fmt.Fprintf(stdout, "imported %d of %d files (%d resources written) in %s\n", loaded, len(files), resources, time.Since(start).Round(time.Millisecond))
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted")
	}
	if failedFiles > 0 {
		return fmt.Errorf("%d of %d files failed (listed above); the others were loaded", failedFiles, len(files))
	}
	return nil
}

func collectFiles(args []string) ([]string, error) {
	var out []string
	for _, a := range args {
		info, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !info.IsDir() {
			out = append(out, a)
			continue
		}
		var found []string
		err = filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			n := strings.TrimSuffix(d.Name(), ".gz")
			if !d.IsDir() && (strings.HasSuffix(n, ".json") || strings.HasSuffix(n, ".ndjson")) {
				found = append(found, p)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		sort.Strings(found)
		out = append(out, found...)
	}
	return out, nil
}

func readFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if strings.HasSuffix(path, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		return io.ReadAll(zr)
	}
	return b, nil
}

// importFile loads one file and returns how many resources it wrote.
func importFile(ctx context.Context, h http.Handler, tok, path string) (int, error) {
	data, err := readFile(path)
	if err != nil {
		return 0, err
	}
	if strings.HasSuffix(strings.TrimSuffix(path, ".gz"), ".ndjson") {
		var entries []any
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		line := 0
		for sc.Scan() {
			line++
			if len(bytes.TrimSpace(sc.Bytes())) == 0 {
				continue
			}
			v, err := fhir.ParseJSON(sc.Bytes())
			if err != nil {
				return 0, fmt.Errorf("line %d: %v", line, err)
			}
			o, ok := v.(*fhir.Object)
			if !ok {
				return 0, fmt.Errorf("line %d is not a resource", line)
			}
			entries = append(entries, entryFor(o, ""))
		}
		if err := sc.Err(); err != nil {
			return 0, err
		}
		return postBundle(ctx, h, tok, transactionOf(entries))
	}
	v, err := fhir.ParseJSON(data)
	if err != nil {
		return 0, err
	}
	o, ok := v.(*fhir.Object)
	if !ok {
		return 0, fmt.Errorf("not a FHIR resource (a JSON object)")
	}
	if o.String("resourceType") == "Bundle" {
		switch o.String("type") {
		case "transaction", "batch":
			return postBundle(ctx, h, tok, o)
		case "collection":
			raw, _ := o.Get("entry")
			list, _ := raw.([]any)
			var entries []any
			for i, e := range list {
				eo, _ := e.(*fhir.Object)
				if eo == nil || eo.Object("resource") == nil {
					return 0, fmt.Errorf("entry %d of the collection Bundle has no resource", i)
				}
				entries = append(entries, entryFor(eo.Object("resource"), eo.String("fullUrl")))
			}
			// A collection has no processing rules and may hold several versions of one resource: its entries
			// are stored one by one (a batch), each failure reported.
			b := transactionOf(entries)
			b.Set("type", "batch")
			return postBundle(ctx, h, tok, b)
		}
	}
	return putResource(ctx, h, tok, o)
}

// putResource stores one resource by itself, so that errors name its own elements (Patient.gender).
func putResource(ctx context.Context, h http.Handler, tok string, o *fhir.Object) (int, error) {
	typ, id := o.String("resourceType"), o.String("id")
	if !fhir.R4().IsResourceType(typ) {
		return 0, fmt.Errorf("resourceType %q is not an R4 resource type", typ)
	}
	method, path := http.MethodPost, "/fhir/"+typ
	if id != "" {
		method, path = http.MethodPut, "/fhir/"+typ+"/"+id
	}
	req := httptest.NewRequestWithContext(ctx, method, path, bytes.NewReader(fhir.AppendJSON(nil, o)))
	req.Header.Set("Content-Type", "application/fhir+json")
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Prefer", "return=minimal")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK && rec.Code != http.StatusCreated {
		return 0, fmt.Errorf("%d %s", rec.Code, outcomeText(rec.Body.Bytes()))
	}
	return 1, nil
}

// entryFor makes a transaction entry that stores res under its own id (PUT) or a new one (POST).
func entryFor(res *fhir.Object, fullURL string) *fhir.Object {
	typ, id := res.String("resourceType"), res.String("id")
	req := &fhir.Object{Keys: []string{"method", "url"}, Vals: []any{"POST", typ}}
	if id != "" {
		req.Vals = []any{"PUT", typ + "/" + id}
	}
	e := &fhir.Object{}
	if fullURL != "" {
		e.Set("fullUrl", fullURL)
	}
	e.Set("resource", res)
	e.Set("request", req)
	return e
}

func transactionOf(entries []any) *fhir.Object {
	return &fhir.Object{Keys: []string{"resourceType", "type", "entry"}, Vals: []any{"Bundle", "transaction", entries}}
}

func postBundle(ctx context.Context, h http.Handler, tok string, bundle *fhir.Object) (int, error) {
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/fhir", bytes.NewReader(fhir.AppendJSON(nil, bundle)))
	req.Header.Set("Content-Type", "application/fhir+json")
	req.Header.Set("Authorization", "Bearer "+tok)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return 0, fmt.Errorf("%d %s", rec.Code, outcomeText(rec.Body.Bytes()))
	}
	v, err := fhir.ParseJSON(rec.Body.Bytes())
	if err != nil {
		return 0, err
	}
	raw, _ := v.(*fhir.Object).Get("entry")
	list, _ := raw.([]any)
	written, failed := 0, 0
	var first string
	reqs, _ := bundle.Get("entry")
	reqList, _ := reqs.([]any)
	for i, e := range list {
		if i < len(reqList) {
			if r, ok := reqList[i].(*fhir.Object); ok {
				if m := r.Object("request").String("method"); m == http.MethodGet || m == http.MethodHead {
					continue // reads in a batch load nothing; their outcome is not the import's
				}
			}
		}
		resp := e.(*fhir.Object).Object("response")
		status := resp.String("status")
		switch {
		case strings.HasPrefix(status, "201"), strings.HasPrefix(status, "200"):
			written++
		case strings.HasPrefix(status, "2"):
		default:
			failed++
			if first == "" {
				first = fmt.Sprintf("entry %d: %s %s", i, status, outcomeText(fhir.AppendJSON(nil, resp.Object("outcome"))))
			}
		}
	}
	if failed > 0 {
		return written, fmt.Errorf("%d entries failed (first: %s)", failed, first)
	}
	return written, nil
}

// outcomeText summarizes an OperationOutcome for the terminal.
func outcomeText(b []byte) string {
	v, err := fhir.ParseJSON(b)
	if err != nil {
		return strings.TrimSpace(string(b))
	}
	o, ok := v.(*fhir.Object)
	if !ok {
		return ""
	}
	raw, _ := o.Get("issue")
	list, _ := raw.([]any)
	var parts []string
	for _, is := range list {
		io, _ := is.(*fhir.Object)
		if io == nil {
			continue
		}
		m := io.String("diagnostics")
		if ex, _ := io.Get("expression"); ex != nil {
			if arr, ok := ex.([]any); ok && len(arr) > 0 {
				m = fmt.Sprint(arr[0]) + ": " + m
			}
		}
		parts = append(parts, m)
		if len(parts) == 3 {
			parts = append(parts, fmt.Sprintf("(%d issues in all)", len(list)))
			break
		}
	}
	return strings.Join(parts, "; ")
}
