module github.com/snakepit-go/snakepit

go 1.26
