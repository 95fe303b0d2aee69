package fhir

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"

	r4 "github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Capabilities describes the server for its CapabilityStatement.
type Capabilities struct {
	Base        string // FHIR base URL
	Software    string
	Version     string
	Date        time.Time
	Description string
	// Security, when set, is the rest.security element (SMART OAuth URIs and the service coding).
	Security *r4.CapabilityStatementRestSecurity
	// Profiles and Operations add per-type declarations (the rights workflow adds Task profiles and operations).
	Profiles   map[string][]string
	Operations map[string][]r4.CapabilityStatementRestResourceOperation
	// SystemOperations are operations on the server base.
	SystemOperations []r4.CapabilityStatementRestResourceOperation
}

// enum converts a FHIR code into a samply enum value through its JSON form.
func enum[T any](code string) T {
	var v T
	b, _ := json.Marshal(code)
	if err := json.Unmarshal(b, &v); err != nil {
		panic(fmt.Sprintf("fhir: %q is not a valid %T", code, v))
	}
	return v
}

func ptr[T any](v T) *T { return &v }

// CapabilityStatement builds the server's CapabilityStatement from the search parameter registry, so that what
// /metadata declares is exactly what routing and search do: every R4 resource type with read, vread, update,
// delete, history and create, conditional create/update/delete, and its search parameters, includes and
// reverse includes.
func CapabilityStatement(c Capabilities) ([]byte, error) {
	reg := Params()
	interactions := []string{"read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"}
	var resources []r4.CapabilityStatementRestResource
	revIncludes := map[string][]string{} // target type -> "Source:param"
	for _, typ := range R4().ResourceTypes() {
		for _, p := range reg.For(typ) {
			if p.Type == TypeReference {
				for _, t := range p.Targets {
					revIncludes[t] = append(revIncludes[t], typ+":"+p.Code)
				}
			}
		}
	}
	for _, typ := range R4().ResourceTypes() {
		res := r4.CapabilityStatementRestResource{
			Type:              enum[r4.ResourceType](typ),
			Profile:           ptr("http://hl7.org/fhir/StructureDefinition/" + typ),
			SupportedProfile:  c.Profiles[typ],
			Versioning:        ptr(r4.ResourceVersionPolicyVersioned),
			ReadHistory:       ptr(true),
			UpdateCreate:      ptr(true),
			ConditionalCreate: ptr(true),
			ConditionalUpdate: ptr(true),
			ConditionalRead:   ptr(r4.ConditionalReadStatusNotSupported),
			ConditionalDelete: ptr(r4.ConditionalDeleteStatusSingle),
			ReferencePolicy:   []r4.ReferenceHandlingPolicy{r4.ReferenceHandlingPolicyLiteral, r4.ReferenceHandlingPolicyLocal},
			Operation:         c.Operations[typ],
		}
		for _, i := range interactions {
			res.Interaction = append(res.Interaction, r4.CapabilityStatementRestResourceInteraction{Code: enum[r4.TypeRestfulInteraction](i)})
		}
		for _, p := range reg.For(typ) {
			sp := r4.CapabilityStatementRestResourceSearchParam{Name: p.Code, Type: enum[r4.SearchParamType](string(p.Type))}
			if p.URL != "" {
				sp.Definition = ptr(p.URL)
			}
			if p.Description != "" {
				sp.Documentation = ptr(p.Description)
			}
			res.SearchParam = append(res.SearchParam, sp)
			if p.Type == TypeReference {
				res.SearchInclude = append(res.SearchInclude, typ+":"+p.Code)
			}
		}
		if len(res.SearchInclude) > 0 {
			res.SearchInclude = append([]string{"*"}, res.SearchInclude...)
		}
		rev := revIncludes[typ]
		sort.Strings(rev)
		res.SearchRevInclude = rev
		resources = append(resources, res)
	}
	doc := "Search result parameters: _count (default 20, at most 1000), _sort (with -), _include and _revinclude (with :iterate), " +
		"_summary (true, text, data, count, false), _elements, _total (none, estimate, accurate). Paging links are keyset cursors. " +
		"Unknown parameters are an error unless the request says Prefer: handling=lenient."
	cs := r4.CapabilityStatement{
		Id:          ptr("carta"),
		Url:         ptr(c.Base + "/metadata"),
		Name:        ptr("Carta"),
		Title:       ptr("Carta FHIR R4 server"),
		Status:      r4.PublicationStatusActive,
		Date:        c.Date.UTC().Format("2006-01-02"),
		Publisher:   ptr("Carta"),
		Description: ptr(c.Description),
		Kind:        r4.CapabilityStatementKindInstance,
		Software:    &r4.CapabilityStatementSoftware{Name: c.Software, Version: ptr(c.Version)},
		Implementation: &r4.CapabilityStatementImplementation{
			Description: "Carta: patient access and patient rights on FHIR R4",
			Url:         ptr(c.Base),
		},
		FhirVersion: r4.FHIRVersion4_0_1,
		Format:      []string{"json", "application/fhir+json"},
		Rest: []r4.CapabilityStatementRest{{
			Mode:          r4.RestfulCapabilityModeServer,
			Documentation: ptr(doc),
			Security:      c.Security,
			Resource:      resources,
			Interaction: []r4.CapabilityStatementRestInteraction{
				{Code: r4.SystemRestfulInteractionTransaction},
				{Code: r4.SystemRestfulInteractionBatch},
				{Code: r4.SystemRestfulInteractionHistorySystem},
			},
			Operation:   c.SystemOperations,
			Compartment: []string{"http://hl7.org/fhir/CompartmentDefinition/patient"},
		}},
	}
	return json.Marshal(cs)
}
