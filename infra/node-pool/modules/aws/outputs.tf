output "node_ids" {
  description = "Instance ids, in index order."
  value       = aws_instance.node[*].id
}

output "node_addresses" {
  description = "Private IP of every node."
  value       = aws_instance.node[*].private_ip
}
