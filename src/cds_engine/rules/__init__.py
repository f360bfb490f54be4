"""Rule packs: schema, loading with line numbers, condition trees and their compilers."""
