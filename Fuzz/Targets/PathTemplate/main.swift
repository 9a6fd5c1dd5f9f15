import FuzzSupport
import Graph

/// Request paths into the graph's path templates and the paths a suggested
/// policy allows: a client chooses the path, and the template ends up in the
/// database and in policy files. Besides crashes: a template is bounded, has
/// no `*` (a wildcard to policy), is its own template, and the suggested paths
/// never allow every path.
Fuzzing.run { bytes in
    let path = Fuzzing.text(bytes)
    let template = PathTemplate.generalize(path)
    Fuzzing.require(template.utf8.count <= PathTemplate.maximumLength + PathTemplate.elided.utf8.count,
                    "template of \(template.utf8.count) bytes for \(path.debugDescription)")
    Fuzzing.require(!template.contains("*"), "template \(template.debugDescription) keeps a *")
    Fuzzing.require(!template.contains("?") && !template.contains("#"), "template \(template.debugDescription) keeps a query or fragment")
    Fuzzing.require(PathTemplate.generalize(template) == template, "the template of \(template.debugDescription) is not itself")
    let allowed = PolicyPaths.paths(for: [template, "/admin"])
    Fuzzing.require(!allowed.paths.contains("/*") && !allowed.paths.contains("*"), "\(template.debugDescription) made \(allowed.paths)")
    Fuzzing.require(allowed.paths.contains("/admin"), "/admin beside \(template.debugDescription) is not kept exactly: \(allowed.paths)")
}
