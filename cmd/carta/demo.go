package main

import (
	"context"
	"crypto/rand"
	_ "embed"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/handlers"
	"github.com/carta-fhir/carta/store"
)

// demoRecords is the demo data: a patient (demo-patient) with visits, vitals, a lab result, a condition, an
// allergy, a prescription and a visit note; her doctor (demo-doctor), the clinic, and a second patient
// (demo-other) whose records the first must never see. All fictional.
//
//go:embed demo.json
var demoRecords []byte

// demoLogins are the demo sign-ins: the patient herself, and a clinician who picks a patient.
var demoLogins = []struct{ username, fhirUser string }{
	{"demo-patient", "Patient/demo-patient"},
	{"demo-doctor", "Practitioner/demo-doctor"},
}

// demoSetup prepares `carta serve --demo`: it loads the demo records unless Patient/demo-patient exists (a
// restart keeps what was changed), gives the demo logins fresh passwords, and registers the demo app. It returns
// the passwords by username.
func demoSetup(ctx context.Context, st *store.Store, h http.Handler, minter *auth.Issuer, baseURL string) (map[string]string, error) {
	_, err := st.Read(ctx, "Patient", "demo-patient", nil)
	if fe, ok := fhir.AsError(err); ok && (fe.Status == http.StatusNotFound || fe.Status == http.StatusGone) {
		tok, _, err := minter.Mint(auth.Grant{Subject: "carta-demo", ClientID: "carta-demo", Scope: "system/*.cruds", TTL: time.Minute})
		if err != nil {
			return nil, err
		}
		v, err := fhir.ParseJSON(demoRecords)
		if err != nil {
			return nil, fmt.Errorf("demo records: %w", err)
		}
		if _, err := postBundle(ctx, h, tok, v.(*fhir.Object)); err != nil {
			return nil, fmt.Errorf("loading the demo records: %w", err)
		}
	} else if err != nil {
		return nil, err
	}
	passwords := map[string]string{}
	for _, l := range demoLogins {
		pw := demoPassword()
		hash, err := auth.HashSecret(pw)
		if err != nil {
			return nil, err
		}
		if err := st.PutUser(ctx, &store.User{Username: l.username, PasswordHash: hash, FHIRUser: l.fhirUser}); err != nil {
			return nil, err
		}
		passwords[l.username] = pw
	}
	app := &store.Client{ID: handlers.DemoClientID, Name: "Carta demo app", Kind: "public",
		RedirectURIs: handlers.DemoRedirect(baseURL), LaunchURI: strings.TrimSuffix(baseURL, "/") + "/demo/launch"}
	if err := st.PutClient(ctx, app); err != nil {
		return nil, err
	}
	return passwords, nil
}

// demoPassword is a fresh password that is easy to type: three groups of five from 32 letters and digits that
// cannot be mistaken for one another (75 bits).
func demoPassword() string {
	const alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
	b := make([]byte, 15)
	rand.Read(b)
	var sb strings.Builder
	for i, c := range b {
		if i > 0 && i%5 == 0 {
			sb.WriteByte('-')
		}
		sb.WriteByte(alphabet[c&31])
	}
	return sb.String()
}
