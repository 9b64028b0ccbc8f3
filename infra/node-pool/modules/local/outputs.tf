output "node_ids" {
  description = "Node ids, in index order."
  value       = [for node in terraform_data.node : node.output.node_id]
}

output "node_addresses" {
  description = "Each node's address (its /healthz is on health_port)."
  value       = [for node in terraform_data.node : node.output.address]
}
