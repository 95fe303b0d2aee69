package fhir

import (
	"sort"
	"strings"
	"sync"
)

// CanonicalBase is the root of every canonical URL Carta defines (search parameters, extensions, code systems,
// profiles, operations). It is chosen once and never changes, because stored data refers to it.
const CanonicalBase = "https://carta-fhir.github.io/fhir"

// ParamType is a search parameter type.
type ParamType string

// Search parameter types.
const (
	TypeString    ParamType = "string"
	TypeToken     ParamType = "token"
	TypeReference ParamType = "reference"
	TypeDate      ParamType = "date"
	TypeNumber    ParamType = "number"
	TypeQuantity  ParamType = "quantity"
	TypeURI       ParamType = "uri"
)

// SearchParam is one search parameter as it applies to one resource type.
type SearchParam struct {
	Code        string
	Type        ParamType
	URL         string
	Description string
	Expression  *Expr    // evaluated on resources of this type; nil for _id and _lastUpdated (columns)
	Targets     []string // resource types a reference parameter may point to
}

// Registry holds the search parameters of every resource type. It drives indexing, query parsing and the
// CapabilityStatement, so that what the server declares is what it does.
type Registry struct {
	byType map[string]map[string]*SearchParam
	sorted map[string][]*SearchParam
	// Unsupported lists parameters of the specification the server does not offer, with the reason.
	Unsupported map[string]string
}

// customParams are Carta's additions to the R4 parameters. Every one carries a Carta canonical URL.
var customParams = []RawSearchParam{
	{
		URL: CanonicalBase + "/SearchParameter/Task-due-date", Code: "due-date", Base: []string{"Task"}, Type: "date",
		Expression:  "Task.restriction.period.end | Task.extension('http://hl7.org/fhir/5.0/StructureDefinition/extension-Task.requestedPeriod').value.ofType(Period).end",
		Description: "The date by which the request must be acted on, extension included (restriction.period.end, or the R5 requestedPeriod extension where restriction is not allowed)",
	},
	{
		URL: "http://hl7.org/fhir/uv/patient-corrections/SearchParameter/ReasonReference", Code: "reasonreference", Base: []string{"Task"}, Type: "reference",
		Expression: "Task.reasonReference", Description: "The request a Task answers (a statement of disagreement's original correction request), from the Patient Request for Corrections IG",
	},
	{
		URL: CanonicalBase + "/SearchParameter/Communication-about", Code: "about", Base: []string{"Communication"}, Type: "reference",
		Expression: "Communication.about", Description: "Resources the communication is about (e.g. the request Task it answers)",
	},
	{
		URL: CanonicalBase + "/SearchParameter/AdverseEvent-patient", Code: "patient", Base: []string{"AdverseEvent"}, Type: "reference",
		Expression: "AdverseEvent.subject.where(resolve() is Patient)", Target: []string{"Patient"},
		Description: "The patient the adverse event is about",
	},
	{
		URL: CanonicalBase + "/SearchParameter/SupplyRequest-patient", Code: "patient", Base: []string{"SupplyRequest"}, Type: "reference",
		Expression: "SupplyRequest.deliverTo.where(resolve() is Patient)", Target: []string{"Patient"},
		Description: "The patient the supplies are delivered to",
	},
}

// Specially handled parameters that every type has: they are columns of the resource table, not index rows.
const (
	ParamID          = "_id"
	ParamLastUpdated = "_lastUpdated"
)

var loadRegistry = sync.OnceValue(func() *Registry { return buildRegistry(R4()) })

// Params returns the search parameter registry built from the R4 definitions plus Carta's own parameters.
func Params() *Registry { return loadRegistry() }

func buildRegistry(s *Spec) *Registry {
	r := &Registry{byType: map[string]map[string]*SearchParam{}, sorted: map[string][]*SearchParam{}, Unsupported: map[string]string{}}
	add := func(typ string, p *SearchParam) {
		m := r.byType[typ]
		if m == nil {
			m = map[string]*SearchParam{}
			r.byType[typ] = m
		}
		m[p.Code] = p
	}
	all := append(append([]RawSearchParam(nil), s.SearchParams...), customParams...)
	for _, raw := range all {
		switch raw.Type {
		case "composite", "special":
			r.Unsupported[raw.URL] = raw.Type + " parameters are not supported"
			continue
		}
		if raw.Code == "phonetic" {
			r.Unsupported[raw.URL] = "phonetic matching is not implemented; a plain string match would mislead"
			continue
		}
		if raw.Code == ParamID || raw.Code == ParamLastUpdated {
			for _, typ := range s.ResourceTypes() {
				add(typ, &SearchParam{Code: raw.Code, Type: ParamType(raw.Type), URL: raw.URL, Description: raw.Description})
			}
			continue
		}
		if raw.Expression == "" {
			r.Unsupported[raw.URL] = "no expression"
			continue
		}
		expr, err := CompilePath(raw.Expression)
		if err != nil {
			r.Unsupported[raw.URL] = err.Error()
			continue
		}
		// A multi-resource expression ("Patient.name | Practitioner.name") is split so each type evaluates only
		// its own part.
		parts := map[string][]*Expr{}
		for _, part := range splitUnion(expr) {
			root := rootName(part.root)
			parts[root] = append(parts[root], part)
		}
		for _, base := range raw.Base {
			types := []string{base}
			if base == "Resource" || base == "DomainResource" {
				types = s.ResourceTypes()
			}
			for _, typ := range types {
				var mine []*Expr
				mine = append(mine, parts[typ]...)
				mine = append(mine, parts["Resource"]...)
				mine = append(mine, parts["DomainResource"]...)
				if len(mine) == 0 {
					continue
				}
				e := mine[0]
				if len(mine) > 1 {
					u := &union{}
					for _, m := range mine {
						u.parts = append(u.parts, m.root)
					}
					e = &Expr{src: raw.Expression, root: u}
				}
				targets := raw.Target
				if raw.Type == "reference" && len(targets) == 0 {
					targets = s.ResourceTypes()
				}
				add(typ, &SearchParam{Code: raw.Code, Type: ParamType(raw.Type), URL: raw.URL, Description: raw.Description, Expression: e, Targets: targets})
			}
		}
	}
	for typ, m := range r.byType {
		list := make([]*SearchParam, 0, len(m))
		for _, p := range m {
			list = append(list, p)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].Code < list[j].Code })
		r.sorted[typ] = list
	}
	return r
}

// Lookup returns the parameter code of resource type typ, or nil.
func (r *Registry) Lookup(typ, code string) *SearchParam { return r.byType[typ][code] }

// For returns the parameters of resource type typ, sorted by code.
func (r *Registry) For(typ string) []*SearchParam { return r.sorted[typ] }

// Codes returns the parameter codes of typ, for error messages.
func (r *Registry) Codes(typ string) string {
	codes := make([]string, 0, len(r.sorted[typ]))
	for _, p := range r.sorted[typ] {
		codes = append(codes, p.Code)
	}
	return strings.Join(codes, ", ")
}
