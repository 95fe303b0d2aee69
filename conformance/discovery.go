package conformance

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

const (
	smartConf  = "SMART App Launch 2.2.0 conformance.html"
	smartWK    = smartConf + "#using-well-known"
	smartCaps  = smartConf + "#capability-sets"
	fhirHTTP   = "FHIR R4 http.html"
	fhirSearch = "FHIR R4 search.html"
)

// capabilities is the server's CapabilityStatement (fetched once per run).
func (t *T) capabilities() map[string]any {
	v, err := t.remember("metadata", func() (any, error) {
		r := t.Do(http.MethodGet, "metadata", Req{Header: map[string]string{"Accept": "application/fhir+json"}})
		if r.Status != http.StatusOK || r.ResourceType() != "CapabilityStatement" {
			return nil, errf("GET metadata answered %d %s", r.Status, r.ResourceType())
		}
		return r.JSON(), nil
	})
	if err != nil {
		t.Fatalf("no CapabilityStatement: %v", err)
	}
	return v.(map[string]any)
}

// smartConfig is the server's .well-known/smart-configuration (fetched once per run), nil when it has none.
func (t *T) smartConfig() map[string]any {
	v, _ := t.remember("smart", func() (any, error) {
		r := t.Do(http.MethodGet, ".well-known/smart-configuration", Req{})
		if r.Status != http.StatusOK || r.JSON() == nil {
			return map[string]any(nil), nil
		}
		return r.JSON(), nil
	})
	m, _ := v.(map[string]any)
	return m
}

// endpoint is a URL of the SMART configuration, resolved against the document's own URL the way a tolerant client
// does ("" when absent), so a relative URL fails discovery-absolute-urls alone rather than every test using it.
func (t *T) endpoint(key string) string {
	v := str(t.needSMART(), key)
	if v == "" {
		return ""
	}
	base, err := url.Parse(t.url(".well-known/smart-configuration"))
	if err != nil {
		return v
	}
	ref, err := url.Parse(v)
	if err != nil {
		return v
	}
	return base.ResolveReference(ref).String()
}

// needSMART omits a test when the server publishes no SMART configuration.
func (t *T) needSMART() map[string]any {
	sc := t.smartConfig()
	if sc == nil {
		t.Omitf("the server publishes no .well-known/smart-configuration")
	}
	return sc
}

func hasCapability(sc map[string]any, c string) bool {
	for _, x := range list(sc, "capabilities") {
		if x == c {
			return true
		}
	}
	return false
}

// resourceDecl is the CapabilityStatement's entry for a type (nil when the type is not declared).
func (t *T) resourceDecl(typ string) map[string]any {
	for _, rest := range list(t.capabilities(), "rest") {
		for _, r := range list(rest, "resource") {
			if str(r, "type") == typ {
				m, _ := r.(map[string]any)
				return m
			}
		}
	}
	return nil
}

// declares reports whether the CapabilityStatement declares an interaction on a type.
func (t *T) declares(typ, interaction string) bool {
	for _, i := range list(t.resourceDecl(typ), "interaction") {
		if str(i, "code") == interaction {
			return true
		}
	}
	return false
}

func discoveryGroup() Group {
	return Group{ID: "discovery", Title: "Discovery", Description: "The CapabilityStatement and the SMART configuration a client reads before anything else.", Tests: []Test{
		{ID: "discovery-metadata", Title: "GET metadata returns an R4 CapabilityStatement in JSON",
			Description: "Every FHIR server answers GET [base]/metadata with its CapabilityStatement; fhirVersion 4.0.x and JSON among its formats.",
			Requirement: fhirHTTP + "#capabilities",
			Run: func(t *T) {
				cs := t.capabilities()
				t.Check(strings.HasPrefix(str(cs, "fhirVersion"), "4.0"), "fhirVersion is %q, not 4.0.x", str(cs, "fhirVersion"))
				json := false
				for _, f := range list(cs, "format") {
					s, _ := f.(string)
					json = json || s == "json" || strings.Contains(s, "json")
				}
				t.Check(json, "format does not list json: %v", cs["format"])
				t.Check(len(list(cs, "rest")) > 0, "no rest element")
			}},
		{ID: "discovery-well-known", Title: "The SMART configuration is at [base]/.well-known/smart-configuration",
			Description: "SMART servers publish their endpoints and capabilities as JSON under the FHIR base.",
			Requirement: smartWK,
			Run: func(t *T) {
				r := t.Get(".well-known/smart-configuration", "")
				t.Check(r.Status == http.StatusOK, "status %d, want 200", r.Status)
				t.Check(r.JSON() != nil, "the body is not a JSON object")
			}},
		{ID: "discovery-json-any-accept", Title: "The SMART configuration is application/json whatever the Accept header",
			Description: "Sent with no Accept, with Accept: application/fhir+json and with Accept: text/html, the document comes back as application/json.",
			Requirement: smartWK,
			Run: func(t *T) {
				t.needSMART()
				for _, accept := range []string{"", "application/fhir+json", "text/html"} {
					r := t.Do(http.MethodGet, ".well-known/smart-configuration", Req{Header: map[string]string{"Accept": accept}})
					ct := r.Header.Get("Content-Type")
					t.Check(r.Status == http.StatusOK && strings.HasPrefix(ct, "application/json") && r.JSON() != nil,
						"with Accept %q: status %d, Content-Type %q", accept, r.Status, ct)
				}
			}},
		{ID: "discovery-required-fields", Title: "The SMART configuration has its required fields",
			Description: "token_endpoint, grant_types_supported (an array, with authorization_code when a launch is declared), capabilities (an array of strings), code_challenge_methods_supported; authorization_endpoint when a launch capability is declared; issuer and jwks_uri with sso-openid-connect.",
			Requirement: smartWK,
			Run: func(t *T) {
				sc := t.needSMART()
				t.Check(str(sc, "token_endpoint") != "", "no token_endpoint")
				grants, ok := sc["grant_types_supported"].([]any)
				t.Check(ok, "grant_types_supported is not an array")
				if hasCapability(sc, "launch-ehr") || hasCapability(sc, "launch-standalone") {
					has := false
					for _, g := range grants {
						has = has || g == "authorization_code"
					}
					t.Check(has, "a launch capability is declared but grant_types_supported lacks authorization_code: %v", grants)
				}
				caps, ok := sc["capabilities"].([]any)
				t.Check(ok, "capabilities is not an array")
				for _, c := range caps {
					_, isStr := c.(string)
					t.Check(isStr, "a capability is not a string: %v", c)
				}
				_, ok = sc["code_challenge_methods_supported"].([]any)
				t.Check(ok, "code_challenge_methods_supported is not an array")
				if hasCapability(sc, "launch-ehr") || hasCapability(sc, "launch-standalone") {
					t.Check(str(sc, "authorization_endpoint") != "", "a launch capability is declared but there is no authorization_endpoint")
				}
				if hasCapability(sc, "sso-openid-connect") {
					t.Check(str(sc, "issuer") != "" && str(sc, "jwks_uri") != "", "sso-openid-connect is declared but issuer or jwks_uri is missing")
				}
			}},
		{ID: "discovery-pkce-s256", Title: "PKCE: S256 is offered and plain is not",
			Description: "code_challenge_methods_supported includes S256 and does not include plain.",
			Requirement: smartWK,
			Run: func(t *T) {
				sc := t.needSMART()
				var methods []string
				for _, m := range list(sc, "code_challenge_methods_supported") {
					s, _ := m.(string)
					methods = append(methods, s)
				}
				t.Check(contains(methods, "S256"), "S256 is not offered: %v", methods)
				t.Check(!contains(methods, "plain"), "plain is offered: %v", methods)
			}},
		{ID: "discovery-absolute-urls", Title: "Every endpoint in the SMART configuration is an absolute URL",
			Description: "authorization, token, registration, management, introspection, revocation endpoints and jwks_uri are absolute https or http URLs.",
			Requirement: smartWK,
			Run: func(t *T) {
				sc := t.needSMART()
				for _, k := range []string{"authorization_endpoint", "token_endpoint", "registration_endpoint", "management_endpoint",
					"introspection_endpoint", "revocation_endpoint", "jwks_uri", "issuer", "user_access_brand_bundle"} {
					v := str(sc, k)
					if v == "" {
						continue
					}
					u, err := url.Parse(v)
					t.Check(err == nil && u.IsAbs() && u.Host != "", "%s is not an absolute URL: %q", k, v)
				}
			}},
		{ID: "discovery-asymmetric", Title: "Asymmetric client authentication is described when declared",
			Description: "With client-confidential-asymmetric, token_endpoint_auth_methods_supported includes private_key_jwt and token_endpoint_auth_signing_alg_values_supported includes RS384 or ES384.",
			Requirement: "SMART App Launch 2.2.0 client-confidential-asymmetric.html#discovery-requirements",
			Run: func(t *T) {
				sc := t.needSMART()
				if !hasCapability(sc, "client-confidential-asymmetric") {
					t.Omitf("client-confidential-asymmetric is not declared")
				}
				var methods, algs []string
				for _, m := range list(sc, "token_endpoint_auth_methods_supported") {
					s, _ := m.(string)
					methods = append(methods, s)
				}
				for _, m := range list(sc, "token_endpoint_auth_signing_alg_values_supported") {
					s, _ := m.(string)
					algs = append(algs, s)
				}
				t.Check(contains(methods, "private_key_jwt"), "token_endpoint_auth_methods_supported lacks private_key_jwt: %v", methods)
				t.Check(contains(algs, "RS384") || contains(algs, "ES384"), "token_endpoint_auth_signing_alg_values_supported has neither RS384 nor ES384: %v", algs)
			}},
		{ID: "discovery-patient-access-set", Title: "The capabilities form a patient-access capability set",
			Description: "Patient Access for Standalone Apps (launch-standalone, a client type, context-standalone-patient, permission-patient) or for EHR Launch (launch-ehr, a client type, context-ehr-patient, permission-patient).",
			Requirement: smartCaps,
			Run: func(t *T) {
				sc := t.needSMART()
				client := hasCapability(sc, "client-public") || hasCapability(sc, "client-confidential-symmetric") || hasCapability(sc, "client-confidential-asymmetric")
				standalone := hasCapability(sc, "launch-standalone") && hasCapability(sc, "context-standalone-patient")
				ehr := hasCapability(sc, "launch-ehr") && hasCapability(sc, "context-ehr-patient")
				t.Check(client && hasCapability(sc, "permission-patient") && (standalone || ehr),
					"no patient-access capability set in %v", sc["capabilities"])
			}},
		{ID: "discovery-recommended-fields", Title: "The SMART configuration has the recommended fields", Optional: true,
			Description: "scopes_supported, response_types_supported, introspection_endpoint, revocation_endpoint (a missing one is reported, not failed).",
			Requirement: smartWK,
			Run: func(t *T) {
				sc := t.needSMART()
				for _, k := range []string{"scopes_supported", "response_types_supported", "introspection_endpoint", "revocation_endpoint"} {
					t.Check(sc[k] != nil, "%s is missing", k)
				}
			}},
		{ID: "discovery-cors", Title: "Discovery is open to browser apps from any origin",
			Description: "With a browser client type declared, GET metadata and the SMART configuration from another origin carry Access-Control-Allow-Origin for it (or *).",
			Requirement: "SMART App Launch 2.2.0 app-launch.html#considerations-for-cross-origin-resource-sharing-cors-support",
			Run: func(t *T) {
				sc := t.needSMART()
				if !hasCapability(sc, "client-public") {
					t.Omitf("no public (browser) client type is declared")
				}
				origin := "https://app.example.org"
				for _, p := range []string{"metadata", ".well-known/smart-configuration"} {
					r := t.Do(http.MethodGet, p, Req{Header: map[string]string{"Origin": origin}})
					acao := r.Header.Get("Access-Control-Allow-Origin")
					t.Check(acao == "*" || acao == origin, "GET %s from %s: Access-Control-Allow-Origin %q", p, origin, acao)
				}
			}},
	}}
}

type suiteErr string

func (e suiteErr) Error() string { return string(e) }

func errf(format string, args ...any) error { return suiteErr(fmt.Sprintf(format, args...)) }
