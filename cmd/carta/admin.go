package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/store"
	"github.com/redis/go-redis/v9"
)

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, " ") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// readSecret returns a flag's value, or a line of standard input when the value is "-".
func readSecret(v string, stdin io.Reader) (string, error) {
	if v != "-" {
		return v, nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

func clientsCmd(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageErr("clients needs a subcommand: add, list or remove")
	}
	fs := newFlags("clients "+args[0], stderr)
	data := fs.String("data", envOr(getenv, "CARTA_DATA_DIR", "./carta-data"), "data directory of the server")
	switch args[0] {
	case "add":
		id := fs.String("id", "", "client_id")
		name := fs.String("name", "", "name shown to people on the consent page")
		kind := fs.String("kind", "", "public, confidential or backend")
		secret := fs.String("secret", "", "client secret for a confidential client (- reads it from standard input; generated when omitted)")
		var redirects multi
		fs.Var(&redirects, "redirect-uri", "registered redirect URI (repeat for more)")
		launchURI := fs.String("launch-uri", "", "the app's EHR launch URL")
		scope := fs.String("scope", "", "the most the client may be granted (required for backend clients, e.g. \"system/*.rs\")")
		jwksFile := fs.String("jwks", "", "file with the client's public JSON Web Key Set (private_key_jwt)")
		jwksURL := fs.String("jwks-url", "", "URL of the client's public JSON Web Key Set")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		c := &store.Client{ID: *id, Name: *name, Kind: *kind, RedirectURIs: strings.Join(redirects, " "), LaunchURI: *launchURI,
			Scopes: strings.Join(strings.Fields(*scope), " "), JWKSURL: *jwksURL}
		if c.ID == "" || strings.ContainsAny(c.ID, " \t\n") {
			return usageErr("--id is required (no spaces)")
		}
		if c.Name == "" {
			c.Name = c.ID
		}
		switch c.Kind {
		case "public", "confidential", "backend":
		default:
			return usageErr("--kind must be public, confidential or backend")
		}
		for _, u := range redirects {
			p, err := url.Parse(u)
			if err != nil || !p.IsAbs() || p.Fragment != "" || (p.Scheme != "https" && !(p.Scheme == "http" && isLoopback(p.Hostname()))) {
				return usageErr("--redirect-uri %q must be an absolute https URL (http only on localhost), without a fragment", u)
			}
		}
		if *jwksFile != "" {
			b, err := os.ReadFile(*jwksFile)
			if err != nil {
				return err
			}
			if err := checkPublicJWKS(b); err != nil {
				return usageErr("--jwks %s: %v", *jwksFile, err)
			}
			c.JWKS = string(b)
		}
		var generated string
		switch c.Kind {
		case "public":
			if len(redirects) == 0 {
				return usageErr("a public client needs at least one --redirect-uri")
			}
			if *secret != "" || c.JWKS != "" || c.JWKSURL != "" {
				return usageErr("a public client has no secret and no keys")
			}
		case "confidential":
			if len(redirects) == 0 {
				return usageErr("a confidential client needs at least one --redirect-uri")
			}
			s, err := readSecret(*secret, stdin)
			if err != nil {
				return err
			}
			if s == "" && c.JWKS == "" && c.JWKSURL == "" {
				generated = randomString(32)
				s = generated
			}
			if s != "" {
				if len(s) < 16 {
					return usageErr("a client secret needs at least 16 characters")
				}
				if c.SecretHash, err = auth.HashSecret(s); err != nil {
					return err
				}
			}
		case "backend":
			if c.JWKS == "" && c.JWKSURL == "" {
				return usageErr("a backend client authenticates with private_key_jwt: give --jwks or --jwks-url")
			}
			if c.Scopes == "" {
				return usageErr("a backend client needs --scope with the system/ scopes it may have")
			}
			for _, sc := range strings.Fields(c.Scopes) {
				if !strings.HasPrefix(sc, "system/") {
					return usageErr("a backend client's scopes are system/ scopes, got %q", sc)
				}
			}
		}
		st, err := openStore(ctx, *data, getenv)
		if err != nil {
			return err
		}
		defer st.Close()
		if err := st.PutClient(ctx, c); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "client %s (%s) saved\n", c.ID, c.Kind)
		if generated != "" {
			fmt.Fprintf(stdout, "client secret (shown once; only its hash is kept): %s\n", generated)
		}
		return nil
	case "list":
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		st, err := openStore(ctx, *data, getenv)
		if err != nil {
			return err
		}
		defer st.Close()
		cs, err := st.Clients(ctx)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tKIND\tNAME\tREDIRECT URIS\tSCOPES\tKEYS")
		for _, c := range cs {
			keys := "-"
			switch {
			case c.JWKSURL != "":
				keys = c.JWKSURL
			case c.JWKS != "":
				keys = "inline JWKS"
			case c.SecretHash != "":
				keys = "secret"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.Kind, c.Name, dash(c.RedirectURIs), dash(c.Scopes), keys)
		}
		return w.Flush()
	case "remove":
		id := fs.String("id", "", "client_id")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *id == "" {
			return usageErr("--id is required")
		}
		st, err := openStore(ctx, *data, getenv)
		if err != nil {
			return err
		}
		defer st.Close()
		if err := st.DeleteClient(ctx, *id); errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("no client %q", *id)
		} else if err != nil {
			return err
		}
		n, err := endGrants(ctx, st, getenv, "", *id)
		if err != nil {
			return fmt.Errorf("client %s is removed, but ending its grants failed: %w", *id, err)
		}
		fmt.Fprintf(stdout, "client %s removed; %s ended (their tokens are refused from now on)\n", *id, grants(n))
		return nil
	}
	return usageErr("clients %s: unknown subcommand (add, list, remove)", args[0])
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func isLoopback(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// checkPublicJWKS refuses a key set that is not JSON, has no usable key, or holds private keys.
func checkPublicJWKS(b []byte) error {
	var set jwkset.JWKSMarshal
	if err := json.Unmarshal(b, &set); err != nil {
		return fmt.Errorf("not a JSON Web Key Set: %v", err)
	}
	keys, err := set.JWKSlice()
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return errors.New("no keys")
	}
	for _, k := range keys {
		if m := k.Marshal(); m.D != "" {
			return errors.New("it holds a private key; register the public keys only")
		}
	}
	return nil
}

func usersCmd(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageErr("users needs a subcommand: add, list, passwd or disable")
	}
	fs := newFlags("users "+args[0], stderr)
	data := fs.String("data", envOr(getenv, "CARTA_DATA_DIR", "./carta-data"), "data directory of the server")
	username := fs.String("username", "", "login name")
	password := fs.String("password", "", "password (- reads it from standard input)")
	var patient, practitioner, related *string
	if args[0] == "add" {
		patient = fs.String("patient", "", "the user is this Patient")
		practitioner = fs.String("practitioner", "", "the user is this Practitioner")
		related = fs.String("related-person", "", "the user is this RelatedPerson (a representative)")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	open := func() (*store.Store, error) { return openStore(ctx, *data, getenv) }
	switch args[0] {
	case "add", "passwd":
		if *username == "" || *password == "" {
			return usageErr("--username and --password are required")
		}
		pw, err := readSecret(*password, stdin)
		if err != nil {
			return err
		}
		if len(pw) < 8 {
			return usageErr("a password needs at least 8 characters")
		}
		hash, err := auth.HashSecret(pw)
		if err != nil {
			return err
		}
		st, err := open()
		if err != nil {
			return err
		}
		defer st.Close()
		if args[0] == "passwd" {
			u, err := st.User(ctx, *username)
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("no user %q", *username)
			} else if err != nil {
				return err
			}
			u.PasswordHash = hash
			if err := st.PutUser(ctx, u); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "password of %s changed\n", *username)
			return nil
		}
		var fhirUser string
		n := 0
		for typ, v := range map[string]string{"Patient": *patient, "Practitioner": *practitioner, "RelatedPerson": *related} {
			if v != "" {
				n++
				fhirUser = typ + "/" + v
			}
		}
		if n != 1 {
			return usageErr("say who the user is: exactly one of --patient, --practitioner, --related-person")
		}
		typ, id, _, ok := fhir.SplitReference(fhirUser)
		if !ok {
			return usageErr("%q is not a valid id", fhirUser)
		}
		if _, err := st.Read(ctx, typ, id, nil); err != nil {
			return fmt.Errorf("%s must exist before a login can be tied to it: %v", fhirUser, err)
		}
		if _, err := st.User(ctx, *username); err == nil {
			return fmt.Errorf("user %q exists already (carta users passwd changes a password)", *username)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err := st.PutUser(ctx, &store.User{Username: *username, PasswordHash: hash, FHIRUser: fhirUser}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "user %s (%s) saved\n", *username, fhirUser)
		return nil
	case "list":
		st, err := open()
		if err != nil {
			return err
		}
		defer st.Close()
		us, err := st.Users(ctx)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "USERNAME\tFHIR USER\tSTATE")
		for _, u := range us {
			state := "active"
			if u.Disabled != 0 {
				state = "disabled"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\n", u.Username, u.FHIRUser, state)
		}
		return w.Flush()
	case "disable":
		if *username == "" {
			return usageErr("--username is required")
		}
		st, err := open()
		if err != nil {
			return err
		}
		defer st.Close()
		u, err := st.User(ctx, *username)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("no user %q", *username)
		} else if err != nil {
			return err
		}
		u.Disabled = time.Now().Unix()
		if err := st.PutUser(ctx, u); err != nil {
			return err
		}
		n, err := endGrants(ctx, st, getenv, *username, "")
		if err != nil {
			return fmt.Errorf("user %s is disabled, but ending the apps' access failed: %w", *username, err)
		}
		fmt.Fprintf(stdout, "user %s disabled; %s ended (their tokens are refused from now on)\n", *username, grants(n))
		return nil
	}
	return usageErr("users %s: unknown subcommand (add, list, passwd, disable)", args[0])
}

func launchCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlags("launch", stderr)
	data := fs.String("data", envOr(getenv, "CARTA_DATA_DIR", "./carta-data"), "data directory of the server")
	patient := fs.String("patient", "", "the patient in context")
	client := fs.String("client", "", "the app to launch (client_id)")
	user := fs.String("user", "", "the practitioner launching, Practitioner/ID (optional)")
	encounter := fs.String("encounter", "", "the encounter in context (optional)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *client == "" || *patient == "" {
		return usageErr("--client and --patient are required")
	}
	srv, err := openServer(ctx, *data, getenv)
	if err != nil {
		return err
	}
	defer srv.store.Close()
	c, err := srv.store.Client(ctx, *client)
	if err != nil {
		return fmt.Errorf("client %q: %v", *client, err)
	}
	if _, err := srv.store.Read(ctx, "Patient", *patient, nil); err != nil {
		return fmt.Errorf("patient %s: %v", *patient, err)
	}
	l := &store.Launch{ID: randomString(18), ClientID: c.ID, Patient: *patient, Encounter: *encounter, FHIRUser: *user,
		Expires: time.Now().Add(auth.LaunchTTL).Unix()}
	if err := srv.store.PutLaunch(ctx, l); err != nil {
		return err
	}
	q := url.Values{"iss": {srv.fhirBase}, "launch": {l.ID}}.Encode()
	if c.LaunchURI == "" {
		fmt.Fprintf(stdout, "launch %s (valid %s); the client has no --launch-uri, so open it with: ?%s\n", l.ID, auth.LaunchTTL, q)
		return nil
	}
	sep := "?"
	if strings.Contains(c.LaunchURI, "?") {
		sep = "&"
	}
	fmt.Fprintln(stdout, c.LaunchURI+sep+q)
	return nil
}

// endGrants revokes the grants of a user or a client the way the running servers would: revoked access tokens
// go to the database (servers reload it every two seconds) and, with CARTA_REDIS_URL, to every server at once.
func endGrants(ctx context.Context, st *store.Store, getenv func(string) string, username, clientID string) (int, error) {
	var rdb *redis.Client
	if u := getenv("CARTA_REDIS_URL"); u != "" {
		opt, err := redis.ParseURL(u)
		if err != nil {
			return 0, fmt.Errorf("CARTA_REDIS_URL: %w", err)
		}
		rdb = redis.NewClient(opt)
		defer rdb.Close()
	}
	rev, err := store.NewRevocations(ctx, st, rdb)
	if err != nil {
		return 0, err
	}
	return (&auth.Server{Store: st, Revocations: rev}).EndGrants(ctx, username, clientID)
}

// grants says how many grants, in words.
func grants(n int) string {
	if n == 1 {
		return "1 grant"
	}
	return fmt.Sprintf("%d grants", n)
}
