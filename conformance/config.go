package conformance

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/goccy/go-yaml"
)

// Identity is someone the tests act as: a patient (with the id of their Patient resource), a practitioner or a
// backend system, with an access token obtained elsewhere (a SMART launch, a portal, `carta token`).
type Identity struct {
	ID    string `json:"id,omitempty"`
	Token string `json:"token,omitempty"`
}

// Config holds the inputs of a run. What is missing makes the tests that need it skip, never fail.
type Config struct {
	// Base is the FHIR base URL, e.g. https://fhir.example.org/r4.
	Base string `json:"base,omitempty"`
	// PatientA and PatientB are two distinct patients with tokens confined to each (patient/ scopes): the
	// searches run as A, and the isolation tests check A never reaches B. Each should have at least one
	// DocumentReference, ideally with an attachment.
	PatientA Identity `json:"patientA"`
	PatientB Identity `json:"patientB"`
	// Practitioner has a user/ token (the provider side of the rights workflows).
	Practitioner Identity `json:"practitioner"`
	// System has a system/ token (a backend service; used to check what exists, never to judge isolation).
	System Identity `json:"system"`
	// Backend is a registered SMART Backend Services client, for the tests that obtain tokens themselves.
	Backend *BackendClient `json:"backend,omitempty"`
	// Launch is a registered SMART app and how to sign in, for the launch tests.
	Launch *LaunchClient `json:"launch,omitempty"`
}

// BackendClient is a SMART Backend Services client registered at the server under test: its client_id, the
// private key whose public half the server knows (PEM: PKCS#8, PKCS#1 or SEC 1; inline or in a file), the key id
// and algorithm (RS384 or ES384) and the scope to ask for.
type BackendClient struct {
	ClientID       string `json:"clientId"`
	PrivateKey     string `json:"privateKey,omitempty"`
	PrivateKeyFile string `json:"privateKeyFile,omitempty"`
	KeyID          string `json:"kid,omitempty"`
	Alg            string `json:"alg,omitempty"`
	Scope          string `json:"scope,omitempty"`
}

// LoadConfig reads a JSON or YAML file. Unknown fields are an error, so a misspelt input is never silently
// ignored.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	trimmed := bytes.TrimSpace(b)
	if len(trimmed) > 0 && trimmed[0] != '{' {
		if b, err = yaml.YAMLToJSON(b); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// Validate checks what every run needs.
func (c *Config) Validate() error {
	if c.Base == "" {
		return fmt.Errorf("the FHIR base URL is needed (--base or \"base\" in the config file)")
	}
	if !strings.HasPrefix(c.Base, "http://") && !strings.HasPrefix(c.Base, "https://") {
		return fmt.Errorf("the FHIR base URL must be http(s)://…, got %q", c.Base)
	}
	c.Base = strings.TrimSuffix(c.Base, "/")
	if b := c.Backend; b != nil {
		if b.ClientID == "" || (b.PrivateKey == "" && b.PrivateKeyFile == "") {
			return fmt.Errorf("backend needs clientId and privateKey or privateKeyFile")
		}
		if b.PrivateKeyFile != "" {
			pem, err := os.ReadFile(b.PrivateKeyFile)
			if err != nil {
				return fmt.Errorf("backend privateKeyFile: %w", err)
			}
			b.PrivateKey = string(pem)
		}
		if _, err := parsePrivateKey(b.PrivateKey); err != nil {
			return fmt.Errorf("backend private key: %w", err)
		}
		switch b.Alg {
		case "":
			b.Alg = "RS384"
			if k, _ := parsePrivateKey(b.PrivateKey); k != nil {
				if _, ec := k.(*ecdsa.PrivateKey); ec {
					b.Alg = "ES384"
				}
			}
		case "RS384", "ES384":
		default:
			return fmt.Errorf("backend alg is RS384 or ES384, not %q", b.Alg)
		}
		if b.Scope == "" {
			b.Scope = "system/Patient.rs"
		}
	}
	if l := c.Launch; l != nil {
		if l.ClientID == "" || l.RedirectURI == "" {
			return fmt.Errorf("launch needs clientId and redirectUri")
		}
		if len(l.LoginCommand) == 0 && (l.Username == "" || l.Password == "") {
			return fmt.Errorf("launch needs username and password (for the login form) or loginCommand")
		}
		if l.Scope == "" {
			l.Scope = "launch/patient openid fhirUser offline_access patient/*.rs"
		}
	}
	if c.PatientA.ID != "" && c.PatientA.ID == c.PatientB.ID {
		return fmt.Errorf("patientA and patientB must be two different patients")
	}
	return nil
}
