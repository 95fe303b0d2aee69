package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/store"
)

// openStore opens the store `carta serve` uses: CARTA_DATABASE_URL when set, else SQLite in data.
func openStore(ctx context.Context, data string, getenv func(string) string) (*store.Store, error) {
	return store.Open(ctx, store.Config{DataDir: data, DatabaseURL: getenv("CARTA_DATABASE_URL")})
}

// serverState is what the operator commands share with a server: its store, keys, issuer and FHIR base.
type serverState struct {
	store            *store.Store
	keys             *auth.Keys
	issuer, fhirBase string
}

// openServer opens the store `carta serve` uses and reads the identity it recorded. The caller closes the store.
func openServer(ctx context.Context, data string, getenv func(string) string) (*serverState, error) {
	st, err := openStore(ctx, data, getenv)
	if err != nil {
		return nil, err
	}
	issuer, fhirBase, err := serverIdentity(ctx, st)
	if err != nil {
		st.Close()
		return nil, err
	}
	keys, err := auth.LoadKeys(ctx, st)
	if err != nil {
		st.Close()
		return nil, err
	}
	return &serverState{store: st, keys: keys, issuer: issuer, fhirBase: fhirBase}, nil
}

// serverIdentity reads the issuer and FHIR base that `carta serve` recorded.
func serverIdentity(ctx context.Context, st *store.Store) (issuer, fhirBase string, err error) {
	issuer, ok1 := st.Setting(ctx, store.SettingIssuer)
	fhirBase, ok2 := st.Setting(ctx, store.SettingFHIRBase)
	if !ok1 || !ok2 {
		return "", "", errors.New("the server has not run on this data yet: start `carta serve` once (with the same --data or CARTA_DATABASE_URL) so tokens get its issuer and audience")
	}
	return issuer, fhirBase, nil
}

func token(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlags("token", stderr)
	data := fs.String("data", envOr(getenv, "CARTA_DATA_DIR", "./carta-data"), "data directory of the server")
	patient := fs.String("patient", "", "mint for this Patient id (patient/ scopes)")
	user := fs.String("user", "", "mint for Practitioner/ID or RelatedPerson/ID")
	system := fs.Bool("system", false, "mint for a backend system (system/ scopes)")
	scope := fs.String("scope", "", `space-separated SMART scopes, e.g. "patient/*.rs" or "system/*.cruds"`)
	ttl := fs.Duration("ttl", time.Hour, "lifetime (at most 1h)")
	client := fs.String("client", "carta-cli", "client_id claim")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("token takes no arguments, got %q", fs.Arg(0))
	}
	if *scope == "" {
		return usageErr("--scope is required")
	}
	if *ttl <= 0 || *ttl > auth.MaxTokenLifetime {
		return usageErr("--ttl must be more than 0 and at most %s", auth.MaxTokenLifetime)
	}
	who := 0
	for _, set := range []bool{*patient != "", *user != "", *system} {
		if set {
			who++
		}
	}
	if who == 0 || (who > 1 && !(*user != "" && *patient != "" && strings.HasPrefix(*user, "Practitioner/"))) {
		return usageErr("say who the token is for: --patient ID, --user Practitioner/ID, --user RelatedPerson/ID or --system (a practitioner may add --patient for a patient in context)")
	}
	scopes, _ := auth.ParseScopes(*scope)
	if len(scopes) == 0 {
		return usageErr("--scope %q has no valid SMART resource scope (like patient/*.rs, user/Patient.read, system/*.cruds)", *scope)
	}
	g := auth.Grant{Scope: *scope, ClientID: *client, TTL: *ttl}
	allowed := map[string]bool{}
	switch {
	case *system:
		g.Subject = *client
		allowed["system"] = true
	case *user != "":
		typ, id, _, ok := fhir.SplitReference(*user)
		if !ok || (typ != "Practitioner" && typ != "RelatedPerson") {
			return usageErr("--user must be Practitioner/ID or RelatedPerson/ID, got %q", *user)
		}
		g.Subject, g.FHIRUser = *user, *user
		if typ == "Practitioner" {
			allowed["user"] = true
			if *patient != "" {
				allowed["patient"] = true
				g.Patient = *patient
			}
		} else {
			allowed["patient"] = true
		}
		_ = id
	default:
		if !fhir.ValidID(*patient) {
			return usageErr("--patient %q is not a valid id", *patient)
		}
		g.Subject, g.FHIRUser, g.Patient = "Patient/"+*patient, "Patient/"+*patient, *patient
		allowed["patient"] = true
	}
	for _, s := range scopes {
		if !allowed[s.Context] {
			return usageErr("scope %s does not fit a token for %s", s, g.Subject)
		}
	}
	srv, err := openServer(ctx, *data, getenv)
	if err != nil {
		return err
	}
	defer srv.store.Close()
	st := srv.store
	if typ, id, _, _ := fhir.SplitReference(*user); typ == "RelatedPerson" {
		// A representative acts for the patient their RelatedPerson record names.
		rp, err := st.Read(ctx, "RelatedPerson", id, nil)
		if err != nil {
			return fmt.Errorf("RelatedPerson/%s: %w", id, err)
		}
		o, err := fhir.ParseResource(rp.Raw, "RelatedPerson")
		if err != nil {
			return err
		}
		pt, pid, _, ok := fhir.SplitReference(o.Object("patient").String("reference"))
		if !ok || pt != "Patient" {
			return fmt.Errorf("RelatedPerson/%s does not name a local Patient in its patient element", id)
		}
		g.Patient = pid
	}
	tok, _, err := (&auth.Issuer{Keys: srv.keys, Issuer: srv.issuer, Audience: srv.fhirBase}).Mint(g)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
