package fhir

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// This file evaluates the subset of FHIRPath that the R4 search parameter definitions use: paths, unions (|),
// indexers, ofType()/as/is on choice elements, where() with equality or resolve() is Type, exists(), extension(url),
// first(), and/or and = / !=. Evaluation is typed: every item knows its FHIR type, so value.ofType(Quantity) finds
// valueQuantity. An expression outside the subset fails to compile and its search parameter is not offered.

// Item is one value produced by a path expression.
type Item struct {
	V    any    // *Object, string, json.Number, bool
	Type string // FHIR type code (e.g. "HumanName", "dateTime", "Reference", or a resource type)
	Node *Node  // members of complex values
	// Elem is the definition of the element the value came from, when known.
	Elem *ElementDef
}

// Expr is a compiled FHIRPath expression.
type Expr struct {
	src  string
	root exprNode
}

func (e *Expr) String() string { return e.src }

type exprNode interface {
	eval(ctx *evalCtx, in []Item) []Item
}

type evalCtx struct {
	spec *Spec
}

// CompilePath compiles a FHIRPath expression in the supported subset.
func CompilePath(src string) (*Expr, error) {
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &pathParser{toks: toks}
	n, err := p.parseExpr()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	if p.pos != len(p.toks) {
		return nil, fmt.Errorf("%s: unexpected %q", src, p.toks[p.pos].text)
	}
	return &Expr{src: src, root: n}, nil
}

// Eval evaluates the expression against a resource.
func (e *Expr) Eval(res *Object) []Item {
	s := R4()
	rt := res.String("resourceType")
	td := s.Types[rt]
	if td == nil {
		return nil
	}
	return e.root.eval(&evalCtx{spec: s}, []Item{{V: res, Type: rt, Node: td.Root}})
}

// EvalItem evaluates the expression against an item (used for composite components).
func (e *Expr) EvalItem(it Item) []Item {
	return e.root.eval(&evalCtx{spec: R4()}, []Item{it})
}

// --- lexer

type token struct {
	kind byte // 'i' identifier, 's' string, 'n' number, 'o' operator/punctuation
	text string
}

func lex(src string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(src) {
		c := src[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '\'':
			j := i + 1
			var b strings.Builder
			for j < len(src) && src[j] != '\'' {
				if src[j] == '\\' && j+1 < len(src) {
					j++
				}
				b.WriteByte(src[j])
				j++
			}
			if j >= len(src) {
				return nil, fmt.Errorf("unterminated string in %q", src)
			}
			toks = append(toks, token{'s', b.String()})
			i = j + 1
		case c >= '0' && c <= '9':
			j := i
			for j < len(src) && (src[j] >= '0' && src[j] <= '9' || src[j] == '.') {
				j++
			}
			toks = append(toks, token{'n', src[i:j]})
			i = j
		case c == '_' || c == '$' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			j := i
			for j < len(src) && (src[j] == '_' || src[j] == '$' || src[j] >= 'a' && src[j] <= 'z' || src[j] >= 'A' && src[j] <= 'Z' || src[j] >= '0' && src[j] <= '9') {
				j++
			}
			toks = append(toks, token{'i', src[i:j]})
			i = j
		case c == '`':
			j := strings.IndexByte(src[i+1:], '`')
			if j < 0 {
				return nil, fmt.Errorf("unterminated identifier in %q", src)
			}
			toks = append(toks, token{'i', src[i+1 : i+1+j]})
			i += j + 2
		case c == '!' && i+1 < len(src) && src[i+1] == '=':
			toks = append(toks, token{'o', "!="})
			i += 2
		case strings.IndexByte(".()[]|=,", c) >= 0:
			toks = append(toks, token{'o', string(c)})
			i++
		default:
			return nil, fmt.Errorf("unsupported character %q in %q", c, src)
		}
	}
	return toks, nil
}

// --- parser

type pathParser struct {
	toks []token
	pos  int
}

func (p *pathParser) peek() token {
	if p.pos < len(p.toks) {
		return p.toks[p.pos]
	}
	return token{}
}

func (p *pathParser) accept(kind byte, text string) bool {
	t := p.peek()
	if t.kind == kind && t.text == text {
		p.pos++
		return true
	}
	return false
}

func (p *pathParser) expect(text string) error {
	if !p.accept('o', text) {
		return fmt.Errorf("expected %q", text)
	}
	return nil
}

func (p *pathParser) parseExpr() (exprNode, error) { return p.parseOr() }

func (p *pathParser) parseOr() (exprNode, error) {
	l, err := p.parseAnd()
	if err != nil {
		return nil, err
	}
	for p.accept('i', "or") {
		r, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		l = &boolOp{op: "or", l: l, r: r}
	}
	return l, nil
}

func (p *pathParser) parseAnd() (exprNode, error) {
	l, err := p.parseEq()
	if err != nil {
		return nil, err
	}
	for p.accept('i', "and") {
		r, err := p.parseEq()
		if err != nil {
			return nil, err
		}
		l = &boolOp{op: "and", l: l, r: r}
	}
	return l, nil
}

func (p *pathParser) parseEq() (exprNode, error) {
	l, err := p.parseUnion()
	if err != nil {
		return nil, err
	}
	for {
		var op string
		switch {
		case p.accept('o', "="):
			op = "="
		case p.accept('o', "!="):
			op = "!="
		default:
			return l, nil
		}
		r, err := p.parseUnion()
		if err != nil {
			return nil, err
		}
		l = &eqOp{neg: op == "!=", l: l, r: r}
	}
}

func (p *pathParser) parseUnion() (exprNode, error) {
	l, err := p.parseType()
	if err != nil {
		return nil, err
	}
	for p.accept('o', "|") {
		r, err := p.parseType()
		if err != nil {
			return nil, err
		}
		if u, ok := l.(*union); ok {
			u.parts = append(u.parts, r)
		} else {
			l = &union{parts: []exprNode{l, r}}
		}
	}
	return l, nil
}

func (p *pathParser) parseType() (exprNode, error) {
	l, err := p.parsePostfix()
	if err != nil {
		return nil, err
	}
	for {
		switch {
		case p.accept('i', "as"):
			t := p.peek()
			if t.kind != 'i' {
				return nil, fmt.Errorf("expected a type after 'as'")
			}
			p.pos++
			l = &ofType{in: l, typ: t.text}
		case p.accept('i', "is"):
			t := p.peek()
			if t.kind != 'i' {
				return nil, fmt.Errorf("expected a type after 'is'")
			}
			p.pos++
			l = &isType{in: l, typ: t.text}
		default:
			return l, nil
		}
	}
}

func (p *pathParser) parsePostfix() (exprNode, error) {
	n, err := p.parsePrimary()
	if err != nil {
		return nil, err
	}
	for {
		switch {
		case p.accept('o', "."):
			n, err = p.parseInvocation(n)
			if err != nil {
				return nil, err
			}
		case p.accept('o', "["):
			t := p.peek()
			if t.kind != 'n' {
				return nil, fmt.Errorf("only numeric indexers are supported")
			}
			p.pos++
			idx, err := strconv.Atoi(t.text)
			if err != nil {
				return nil, err
			}
			if err := p.expect("]"); err != nil {
				return nil, err
			}
			n = &index{in: n, i: idx}
		default:
			return n, nil
		}
	}
}

func (p *pathParser) parsePrimary() (exprNode, error) {
	t := p.peek()
	switch {
	case t.kind == 'o' && t.text == "(":
		p.pos++
		n, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		return n, p.expect(")")
	case t.kind == 's':
		p.pos++
		return &literal{v: t.text, typ: "string"}, nil
	case t.kind == 'i' && (t.text == "true" || t.text == "false"):
		p.pos++
		return &literal{v: t.text == "true", typ: "boolean"}, nil
	case t.kind == 'i':
		return p.parseInvocation(nil)
	}
	return nil, fmt.Errorf("unexpected %q", t.text)
}

func (p *pathParser) parseInvocation(in exprNode) (exprNode, error) {
	t := p.peek()
	if t.kind != 'i' {
		return nil, fmt.Errorf("expected a name after '.'")
	}
	p.pos++
	if !p.accept('o', "(") {
		return &member{in: in, name: t.text}, nil
	}
	var args []exprNode
	var typeArg string
	if !p.accept('o', ")") {
		for {
			if t.text == "ofType" || t.text == "as" || t.text == "is" {
				a := p.peek()
				if a.kind != 'i' {
					return nil, fmt.Errorf("%s() takes a type name", t.text)
				}
				p.pos++
				typeArg = a.text
			} else {
				a, err := p.parseExpr()
				if err != nil {
					return nil, err
				}
				args = append(args, a)
			}
			if p.accept('o', ")") {
				break
			}
			if err := p.expect(","); err != nil {
				return nil, err
			}
		}
	}
	switch t.text {
	case "ofType", "as":
		return &ofType{in: in, typ: typeArg}, nil
	case "is":
		return &isType{in: in, typ: typeArg}, nil
	case "where":
		if len(args) != 1 {
			return nil, fmt.Errorf("where() takes one argument")
		}
		return &where{in: in, cond: args[0]}, nil
	case "exists":
		if len(args) == 1 {
			return &exists{in: &where{in: in, cond: args[0]}}, nil
		}
		return &exists{in: in}, nil
	case "resolve":
		return &resolve{in: in}, nil
	case "first":
		return &index{in: in, i: 0}, nil
	case "extension":
		if len(args) != 1 {
			return nil, fmt.Errorf("extension() takes one argument")
		}
		lit, ok := args[0].(*literal)
		if !ok {
			return nil, fmt.Errorf("extension() takes a string literal")
		}
		return &where{in: &member{in: in, name: "extension"}, cond: &eqOp{l: &member{name: "url"}, r: lit}}, nil
	}
	return nil, fmt.Errorf("function %s() is not supported", t.text)
}

// --- evaluation

type member struct {
	in   exprNode
	name string
}

func (m *member) eval(ctx *evalCtx, in []Item) []Item {
	if m.in != nil {
		in = m.in.eval(ctx, in)
	}
	var out []Item
	for _, it := range in {
		// A type name at the start of a path selects the resource itself.
		if it.Node != nil && (it.Type == m.name || (m.name == "Resource" || m.name == "DomainResource") && ctx.spec.IsResourceType(it.Type)) {
			out = append(out, it)
			continue
		}
		o, ok := it.V.(*Object)
		if !ok || it.Node == nil {
			continue
		}
		for _, f := range it.Node.byElem(m.name) {
			v, ok := o.Get(f.Name)
			if !ok {
				continue
			}
			out = appendItems(ctx, out, v, f)
		}
	}
	return out
}

func appendItems(ctx *evalCtx, out []Item, v any, f *Field) []Item {
	if arr, ok := v.([]any); ok {
		for _, e := range arr {
			out = appendItems(ctx, out, e, f)
		}
		return out
	}
	if v == nil {
		return out
	}
	it := Item{V: v, Type: f.Type, Node: f.Node, Elem: f.Elem}
	if f.Resource {
		if o, ok := v.(*Object); ok {
			rt := o.String("resourceType")
			if td := ctx.spec.Types[rt]; td != nil {
				it.Type, it.Node = rt, td.Root
			}
		}
	}
	return append(out, it)
}

// input evaluates a function's target, which is the current input when the call has none ("resolve()").
func input(ctx *evalCtx, n exprNode, in []Item) []Item {
	if n == nil {
		return in
	}
	return n.eval(ctx, in)
}

type union struct{ parts []exprNode }

func (u *union) eval(ctx *evalCtx, in []Item) []Item {
	var out []Item
	for _, p := range u.parts {
		out = append(out, p.eval(ctx, in)...)
	}
	return out
}

type index struct {
	in exprNode
	i  int
}

func (x *index) eval(ctx *evalCtx, in []Item) []Item {
	r := input(ctx, x.in, in)
	if x.i < len(r) {
		return r[x.i : x.i+1]
	}
	return nil
}

type ofType struct {
	in  exprNode
	typ string
}

func (o *ofType) eval(ctx *evalCtx, in []Item) []Item {
	var out []Item
	for _, it := range input(ctx, o.in, in) {
		if it.Type == o.typ {
			out = append(out, it)
		}
	}
	return out
}

type isType struct {
	in  exprNode
	typ string
}

func (o *isType) eval(ctx *evalCtx, in []Item) []Item {
	r := input(ctx, o.in, in)
	if len(r) != 1 {
		return nil
	}
	return []Item{{V: r[0].Type == o.typ, Type: "boolean"}}
}

type resolve struct{ in exprNode }

// eval yields, for each Reference, an item whose Type is the target's resource type (not the resource itself:
// search parameters only test the type).
func (r *resolve) eval(ctx *evalCtx, in []Item) []Item {
	var out []Item
	for _, it := range input(ctx, r.in, in) {
		if t := ReferenceTargetType(it); t != "" {
			out = append(out, Item{Type: t})
		}
	}
	return out
}

// ReferenceTargetType returns the resource type a Reference (or canonical/uri) item points to, or "".
func ReferenceTargetType(it Item) string {
	var ref, typ string
	switch v := it.V.(type) {
	case *Object:
		ref = v.String("reference")
		typ = v.String("type")
	case string:
		ref = v
	}
	if typ != "" {
		return typ
	}
	if ref == "" || strings.HasPrefix(ref, "#") {
		return ""
	}
	ref = strings.SplitN(ref, "/_history/", 2)[0]
	parts := strings.Split(ref, "/")
	if len(parts) >= 2 {
		t := parts[len(parts)-2]
		if R4().IsResourceType(t) {
			return t
		}
	}
	return ""
}

type where struct {
	in   exprNode
	cond exprNode
}

func (w *where) eval(ctx *evalCtx, in []Item) []Item {
	var out []Item
	for _, it := range input(ctx, w.in, in) {
		if truthy(w.cond.eval(ctx, []Item{it})) {
			out = append(out, it)
		}
	}
	return out
}

func truthy(r []Item) bool {
	if len(r) == 0 {
		return false
	}
	if len(r) == 1 {
		if b, ok := r[0].V.(bool); ok {
			return b
		}
	}
	return true
}

type exists struct{ in exprNode }

func (e *exists) eval(ctx *evalCtx, in []Item) []Item {
	return []Item{{V: len(input(ctx, e.in, in)) > 0, Type: "boolean"}}
}

type literal struct {
	v   any
	typ string
}

func (l *literal) eval(*evalCtx, []Item) []Item { return []Item{{V: l.v, Type: l.typ}} }

type eqOp struct {
	neg  bool
	l, r exprNode
}

func (e *eqOp) eval(ctx *evalCtx, in []Item) []Item {
	l, r := e.l.eval(ctx, in), e.r.eval(ctx, in)
	if len(l) == 0 || len(r) == 0 {
		return nil
	}
	eq := len(l) == len(r)
	for i := 0; eq && i < len(l); i++ {
		eq = scalarEqual(l[i].V, r[i].V)
	}
	return []Item{{V: eq != e.neg, Type: "boolean"}}
}

func scalarEqual(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		if y, ok := b.(json.Number); ok {
			return x == y
		}
		return false
	case string, bool:
		return a == b
	}
	return false
}

type boolOp struct {
	op   string
	l, r exprNode
}

func (b *boolOp) eval(ctx *evalCtx, in []Item) []Item {
	l, r := truthy(b.l.eval(ctx, in)), truthy(b.r.eval(ctx, in))
	if b.op == "and" {
		return []Item{{V: l && r, Type: "boolean"}}
	}
	return []Item{{V: l || r, Type: "boolean"}}
}

// rootTypes returns the type names an expression's paths start from ("Patient" in Patient.name | ...). It is used
// to split a multi-resource search parameter expression by base type.
func splitUnion(e *Expr) []*Expr {
	u, ok := e.root.(*union)
	if !ok {
		return []*Expr{e}
	}
	out := make([]*Expr, 0, len(u.parts))
	for _, p := range u.parts {
		out = append(out, &Expr{src: e.src, root: p})
	}
	return out
}

// rootName returns the first identifier of a path expression, or "".
func rootName(n exprNode) string {
	for {
		switch x := n.(type) {
		case *member:
			if x.in == nil {
				return x.name
			}
			n = x.in
		case *ofType:
			n = x.in
		case *isType:
			n = x.in
		case *where:
			n = x.in
		case *index:
			n = x.in
		case *exists:
			n = x.in
		case *resolve:
			n = x.in
		case *eqOp:
			n = x.l
		case *boolOp:
			n = x.l
		case *union:
			n = x.parts[0]
		default:
			return ""
		}
	}
}
